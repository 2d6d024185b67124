package ai.loraship.host;

import ai.djl.inference.streaming.ChunkedBytesSupplier;
import ai.djl.modality.Output;
import ai.djl.python.engine.CodecUtils;
import ai.djl.util.Utils;

import io.netty.buffer.ByteBuf;
import io.netty.channel.ChannelHandlerContext;
import io.netty.handler.codec.ByteToMessageDecoder;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.util.List;

/**
 * DJL's {@code Connection.OutputDecoder} (engine 0.34.0) with one change: a streamed chunk's "more
 * chunks follow" flag is kept only once the whole chunk has arrived.
 *
 * <p>DJL's decoder stores the flag before reading the chunk's bytes. When a socket read ends inside
 * the 5-byte end-of-stream message, the retry then parses that message as a new response: the stream
 * never ends (its client waits for chunked_read_timeout), the next request gets a response with
 * status 0, and the byte stream stays misaligned until predict_timeout restarts the worker. Tiny,
 * fast models hit it in a few percent of streamed requests. {@link PyProbe#useStreamSafeDecoder}
 * puts this decoder in DJL's channel pipeline in place of the original.
 */
final class StreamSafeDecoder extends ByteToMessageDecoder {

    private static final Logger logger = LoggerFactory.getLogger(StreamSafeDecoder.class);

    private final int maxBufferSize = Integer.parseInt(
            Utils.getEnvOrSystemProperty("MAX_NETTY_BUFFER_SIZE", String.valueOf(CodecUtils.MAX_BUFFER_SIZE)));
    private boolean hasMoreChunk;
    private ChunkedBytesSupplier data;

    @Override
    protected void decode(ChannelHandlerContext ctx, ByteBuf in, List<Object> out) {
        in.markReaderIndex();
        boolean completed = false;
        try {
            if (hasMoreChunk) {
                boolean more = in.readByte() == 1;
                byte[] chunk = CodecUtils.readBytes(in, maxBufferSize); // throws while incomplete
                hasMoreChunk = more;
                data.appendContent(chunk, !more);
            } else {
                int code = in.readShort();
                String message = CodecUtils.readUtf8(in);
                Output output = new Output(code, message);
                int size = in.readShort();
                for (int i = 0; i < size; ++i) {
                    output.addProperty(CodecUtils.readUtf8(in), CodecUtils.readUtf8(in));
                }
                int contentSize = in.readShort();
                if (contentSize == -1) {
                    hasMoreChunk = true;
                    data = new ChunkedBytesSupplier();
                    output.add(data);
                } else {
                    for (int i = 0; i < contentSize; ++i) {
                        String key = CodecUtils.readUtf8(in);
                        output.add(key, CodecUtils.readBytes(in, maxBufferSize));
                    }
                }
                out.add(output);
            }
            completed = true;
        } catch (IndexOutOfBoundsException | NegativeArraySizeException ignore) {
            // incomplete: wait for more bytes
        } finally {
            if (!completed) {
                in.resetReaderIndex();
            }
        }
    }

    @Override
    public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
        logger.error("Exception occurred during request handler of python worker", cause);
        ctx.close();
    }
}
