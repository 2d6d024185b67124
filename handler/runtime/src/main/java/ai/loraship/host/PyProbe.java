package ai.loraship.host;

import ai.djl.inference.Predictor;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import io.netty.channel.Channel;
import io.netty.channel.ChannelPipeline;

import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.util.List;
import java.util.concurrent.Future;

/**
 * Reads the state of the Python process behind a PyPredictor.
 *
 * <p>DJL keeps PyPredictor and PyProcess package-private; DJL Serving learns a worker's health from
 * its own WorkerThread bookkeeping, which this host does not have. Reflection over the pinned engine
 * (0.34.0) is the smallest way to answer /ping truthfully. If the fields ever move, every probe
 * degrades to "healthy, no restart pending" and the host still serves.
 */
final class PyProbe {

    private static final Logger logger = LoggerFactory.getLogger(PyProbe.class);
    private static volatile boolean warned;

    private PyProbe() {}

    /** True when the worker process is started and its model is loaded. */
    static boolean isReady(Predictor<?, ?> predictor) {
        Object process = process(predictor);
        if (process == null) {
            return true;
        }
        // A null answer means the probe failed: assume ready rather than report a false outage.
        return !Boolean.FALSE.equals(call(process, "isReady"))
                && !Boolean.TRUE.equals(call(process, "isModelUnrecoverable"));
    }

    /** True while PyProcess is restarting its worker by itself (after a failed predict). */
    static boolean restartPending(Predictor<?, ?> predictor) {
        Object future = field(process(predictor), "restartFuture");
        return future instanceof Future<?> f && !f.isDone();
    }

    /** The worker's OS pid, used to notice that PyProcess replaced the process. */
    static String pid(Predictor<?, ?> predictor) {
        Object pid = field(process(predictor), "pid");
        return pid == null ? null : pid.toString();
    }

    /**
     * Puts {@link StreamSafeDecoder} in place of DJL's decoder on the process's connections. Called
     * on the worker thread before it sends anything to a new Python process (nothing is in flight).
     */
    static void useStreamSafeDecoder(Predictor<?, ?> predictor) {
        if (!(field(process(predictor), "connections") instanceof List<?> connections)) {
            return;
        }
        for (Object connection : connections) {
            if (field(connection, "channel") instanceof Channel channel) {
                ChannelPipeline pipeline = channel.pipeline();
                if (pipeline.get("decoder") != null && !(pipeline.get("decoder") instanceof StreamSafeDecoder)) {
                    pipeline.replace("decoder", "decoder", new StreamSafeDecoder());
                }
            }
        }
    }

    private static Object process(Predictor<?, ?> predictor) {
        return field(predictor, "process");
    }

    private static Object field(Object target, String name) {
        if (target == null) {
            return null;
        }
        try {
            Field f = target.getClass().getDeclaredField(name);
            f.setAccessible(true);
            return f.get(target);
        } catch (ReflectiveOperationException | RuntimeException e) {
            warnOnce(e);
            return null;
        }
    }

    private static Object call(Object target, String name) {
        try {
            Method m = target.getClass().getDeclaredMethod(name);
            m.setAccessible(true);
            return m.invoke(target);
        } catch (ReflectiveOperationException | RuntimeException e) {
            warnOnce(e);
            return null;
        }
    }

    private static void warnOnce(Exception e) {
        if (!warned) {
            warned = true;
            logger.warn("Cannot read the Python worker state ({}); health is assumed", e.toString());
        }
    }
}
