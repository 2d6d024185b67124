package ai.loraship.host;

import ai.djl.inference.streaming.ChunkedBytesSupplier;
import ai.djl.modality.Input;
import ai.djl.modality.Output;
import ai.djl.ndarray.BytesSupplier;

import com.sun.net.httpserver.Headers;
import com.sun.net.httpserver.HttpExchange;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import static ai.loraship.host.Http.query;
import static ai.loraship.host.Http.sendError;
import static ai.loraship.host.Http.sendException;

/**
 * Inference requests as DJL Serving handles them: the request becomes an Input (query parameters as
 * content, headers as properties), waits in the shared queue for a worker's batch, and the Output
 * goes back whole or, when its data is chunked, as a stream.
 */
final class Inference {

    // The lines logged here were DjlHost's: they keep its logger name, so the server log reads as before.
    private static final Logger logger = LoggerFactory.getLogger(DjlHost.class);

    private final HostConfig config;
    private final Adapters adapters;
    private final Worker.Pool pool;
    private final boolean allowHandlerOverride =
            Boolean.parseBoolean(System.getenv("ALLOW_REQUEST_HANDLER_OVERRIDE"));

    Inference(HostConfig config, Adapters adapters, Worker.Pool pool) {
        this.config = config;
        this.adapters = adapters;
        this.pool = pool;
    }

    /** An inference request, answered with the handler's Output. */
    void predict(HttpExchange ex) throws Exception {
        Input input = new Input();
        // As DJL's RequestParser: query parameters are content items, headers are properties.
        for (String[] kv : query(ex)) {
            input.add(kv[0], kv[1]);
        }
        for (Map.Entry<String, List<String>> header : ex.getRequestHeaders().entrySet()) {
            String key = headerName(header.getKey());
            for (String value : header.getValue()) {
                if ("X-Amzn-SageMaker-Custom-Attributes".equalsIgnoreCase(key)) {
                    for (String token : value.split(";")) {
                        String[] pair = token.split("=", 2);
                        if (pair.length == 2) {
                            input.addProperty(pair[0].trim(), pair[1].trim());
                        }
                    }
                } else {
                    input.addProperty(key, value);
                }
            }
        }
        if (!allowHandlerOverride && input.getProperty("handler", null) != null) {
            sendError(ex, 400, "BadRequestException", "The handler can't be overridden in a request");
            return;
        }
        // djl_python reads a batch_size property as "this Input is a batch" and batch_NNN.* keys as
        // its items: a client header of that name would make the worker misparse the request.
        for (String key : input.getProperties().keySet()) {
            if (key.toLowerCase(Locale.ROOT).startsWith("batch_")) {
                sendError(ex, 400, "BadRequestException",
                        "Header or custom attribute '" + key + "' is reserved for DJL's batch encoding");
                return;
            }
        }
        // DJL's model job refuses an ?adapter= that its registry lacks (__base__ included): 424 and no body.
        String queryAdapter = input.getContent().contains("adapter") ? input.getAsString("adapter") : null;
        if (queryAdapter != null && adapters.get(queryAdapter) == null) {
            sendFull(ex, new Output(424, "The adapter " + queryAdapter + " has not been registered"), new byte[0]);
            return;
        }
        byte[] body = readBody(ex);
        if (body == null) {
            sendError(ex, 413, "RequestTooLargeException",
                    "Request body exceeds max_request_size (" + config.maxRequestSize + " bytes)");
            return;
        }
        input.add("data", body);
        input.addProperty("requestId", UUID.randomUUID().toString());

        Worker.Job job = new Worker.Job(input);
        if (!pool.offer(job)) {
            sendError(ex, 503, "WlmCapacityException",
                    "Job queue is full (job_queue_size=" + config.jobQueueSize + ")");
            return;
        }
        Output output;
        try {
            output = job.result.get();
        } catch (ExecutionException e) {
            sendException(ex, e.getCause(), config.predictTimeoutSeconds);
            return;
        }
        sendOutput(ex, job.input, output);
    }

    /**
     * The JDK server hands header names over as "Content-type" (first letter upper case only); Netty,
     * and so DJL, keeps them as sent. Title case restores the usual spelling of what clients send.
     */
    private static String headerName(String name) {
        StringBuilder sb = new StringBuilder(name.length());
        boolean upper = true;
        for (char c : name.toCharArray()) {
            sb.append(upper ? Character.toUpperCase(c) : c);
            upper = c == '-';
        }
        return sb.toString().replace("-Sagemaker-", "-SageMaker-");
    }

    /** The body, or null when it is larger than max_request_size (then it is not read further). */
    private byte[] readBody(HttpExchange ex) throws IOException {
        String length = ex.getRequestHeaders().getFirst("Content-Length");
        if (length != null && Long.parseLong(length.trim()) > config.maxRequestSize) {
            return null;
        }
        int limit = (int) Math.min(config.maxRequestSize, Integer.MAX_VALUE - 16);
        try (InputStream in = ex.getRequestBody()) {
            byte[] body = in.readNBytes(limit + 1);
            return body.length > limit ? null : body;
        }
    }

    /**
     * The last chunk, if it is still on its way when the stream already reads as complete. DJL's
     * {@code ChunkedBytesSupplier.appendContent(data, true)} (0.34.0 and 0.36.0) marks the supplier complete
     * before it queues the data, so a reader between the two sees no next chunk and would drop the last line
     * of a stream (the one with the answer); seen in a few of a thousand streams under continuous batching.
     * The two steps are adjacent, so the chunk is polled for a short while (a stream that did end waits that
     * long, once).
     */
    private static byte[] lateLastChunk(ChunkedBytesSupplier chunks) {
        long deadline = System.nanoTime() + LATE_CHUNK_NANOS;
        do {
            byte[] late = chunks.pollChunk();
            if (late != null) {
                return late;
            }
            Thread.onSpinWait();
        } while (System.nanoTime() < deadline);
        return null;
    }

    private static final long LATE_CHUNK_NANOS = 1_000_000;

    /** Status, headers and body from the Output, streamed when its data is chunked (see DJL's sendOutput). */
    private void sendOutput(HttpExchange ex, Input input, Output output) throws IOException {
        BytesSupplier data = output.getData();
        if (!(data instanceof ChunkedBytesSupplier chunks)) {
            sendFull(ex, output, data == null ? new byte[0] : data.getAsBytes());
            return;
        }
        OutputStream os = null;
        try {
            byte[] buf = next(chunks);
            byte[] late = null;
            if (buf == END || !chunks.hasNext() && (late = lateLastChunk(chunks)) == null) {
                // One chunk (or none): not a stream, send a normal response.
                sendFull(ex, output, buf == END ? new byte[0] : buf);
                return;
            }
            // Code and headers are read only now: Python may set them with its first chunk.
            copyHeaders(ex, output);
            ex.sendResponseHeaders(output.getCode(), 0);
            os = ex.getResponseBody();
            while (buf != END) {
                write(os, buf, input);
                buf = late != null ? END : next(chunks);
            }
            if (late != null) {
                write(os, late, input);
            }
        } catch (InterruptedException | IllegalStateException e) {
            if (os == null) {
                sendError(ex, 503, e.getClass().getSimpleName(), "Reading the response stream failed: " + e.getMessage());
                return;
            }
            // Headers are gone: closing the connection without the last chunk tells the client.
            throw new IOException("Response stream aborted: " + e.getMessage(), e);
        }
        os.close();
    }

    private void write(OutputStream os, byte[] buf, Input input) throws IOException {
        if (buf.length == 0) {
            return;
        }
        try {
            os.write(buf);
            os.flush();
        } catch (IOException e) {
            clientGone(input);
            throw e;
        }
    }

    /** The next chunk of a stream (empty for a null one), or {@link #END}. */
    private byte[] next(ChunkedBytesSupplier chunks) throws InterruptedException {
        if (chunks.hasNext()) {
            byte[] buf = chunks.nextChunk(config.chunkedReadTimeoutSeconds, TimeUnit.SECONDS);
            return buf == null ? new byte[0] : buf;
        }
        byte[] late = lateLastChunk(chunks);
        return late == null ? END : late;
    }

    private static final byte[] END = new byte[0];

    /**
     * A streamed request whose client went away. In DJL's async mode (the Input then has the
     * request_tracking_id that AsyncRequestManager gave it) the handler's {@code cancel_request} ends
     * its row, so its slot frees at the next decode step. Real DJL Serving 0.36.0 does not do this: it
     * only marks the Input cancelled, which nothing reads once a job is dispatched.
     */
    private void clientGone(Input input) {
        String tracking = input.getProperty("request_tracking_id", null);
        if (tracking == null) {
            return;
        }
        CompletableFuture.runAsync(() -> {
            try {
                Output out = pool.onAll(() -> {
                    Input cancel = new Input();
                    cancel.addProperty("handler", "cancel_request");
                    cancel.addProperty("target", tracking);
                    return cancel;
                });
                if (out.getCode() >= 300) {
                    logger.warn("Cancelling request {} failed: {} {}", tracking, out.getCode(), out.getMessage());
                }
            } catch (Exception e) {
                logger.warn("Cancelling request {} failed", tracking, e);
            }
        });
    }

    private void sendFull(HttpExchange ex, Output output, byte[] body) throws IOException {
        copyHeaders(ex, output);
        int code = output.getCode();
        boolean noBody = body.length == 0 || code == 204 || code == 304;
        ex.sendResponseHeaders(code, noBody ? -1 : body.length);
        if (!noBody) {
            ex.getResponseBody().write(body);
        }
    }

    private static void copyHeaders(HttpExchange ex, Output output) {
        Headers headers = ex.getResponseHeaders();
        for (Map.Entry<String, String> p : output.getProperties().entrySet()) {
            String key = p.getKey();
            // Framing is the server's job; a stray value from Python would corrupt the response.
            if (!"content-length".equalsIgnoreCase(key) && !"transfer-encoding".equalsIgnoreCase(key)) {
                headers.set(key, p.getValue());
            }
        }
    }
}
