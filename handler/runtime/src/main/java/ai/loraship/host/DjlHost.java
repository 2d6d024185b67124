package ai.loraship.host;

import ai.djl.Device;
import ai.djl.Model;
import ai.djl.engine.Engine;
import ai.djl.modality.Input;
import ai.djl.modality.Output;
import ai.djl.translate.NoopServingTranslatorFactory;
import ai.djl.translate.Translator;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.IOException;
import java.util.Map;

/**
 * A small stand-in for DJL Serving's ModelServer that serves one Python model over HTTP on top of
 * DJL's real Python engine, so the handler sees exactly the DJL contract (Input/Output, static
 * batching, adapter operations, streaming).
 *
 * <p>This class loads the model and wires the parts together: {@link Routes} (the HTTP server),
 * {@link Inference}, {@link AdapterApi} and {@link Worker.Pool}.
 *
 * <p>Usage: {@code java -cp 'lib/host:lib/djl/*' ai.loraship.host.DjlHost --model-dir DIR
 * [--host 127.0.0.1] [--port 8080] [--model-name NAME]}
 */
public final class DjlHost {

    static {
        // DJL's model_metric logger goes to /server/metrics (MetricLogging), the rest to slf4j-simple; the
        // provider is named so SLF4J does not pick between the two on the class path (and says nothing).
        System.setProperty("slf4j.provider", System.getProperty("slf4j.provider", MetricLogging.class.getName()));
        System.setProperty("slf4j.internal.verbosity", System.getProperty("slf4j.internal.verbosity", "WARN"));
        // Timestamps on the console; set before the first logger is created.
        System.setProperty(
                "org.slf4j.simpleLogger.showDateTime",
                System.getProperty("org.slf4j.simpleLogger.showDateTime", "true"));
        System.setProperty(
                "org.slf4j.simpleLogger.dateTimeFormat",
                System.getProperty("org.slf4j.simpleLogger.dateTimeFormat", "HH:mm:ss.SSS"));
    }

    private static final Logger logger = LoggerFactory.getLogger(DjlHost.class);

    private final HostConfig config;
    private final Worker.Pool pool;
    private final Adapters adapters = new Adapters();
    private final AdapterApi adapterApi;
    private final Routes routes;
    private Model model;

    private DjlHost(HostConfig config) {
        this.config = config;
        this.pool = new Worker.Pool(config.jobQueueSize);
        this.adapterApi = new AdapterApi(config, adapters, pool);
        this.routes = new Routes(config, pool, new Inference(config, adapters, pool), adapterApi);
    }

    public static void main(String[] args) {
        HostConfig config;
        try {
            config = HostConfig.parse(args);
        } catch (IOException | RuntimeException e) {
            logger.error("Invalid configuration: {}", e.getMessage());
            System.exit(2);
            return;
        }
        DjlHost host = new DjlHost(config);
        Runtime.getRuntime().addShutdownHook(new Thread(host::shutdown, "shutdown"));
        try {
            host.load();
            host.adapterApi.registerAtStartup();
        } catch (Throwable t) {
            logger.error("Failed to load model {} from {}: {}", config.modelName, config.modelDir, t.toString(), t);
            System.exit(1);
        }
        try {
            host.routes.bind();
        } catch (IOException e) {
            logger.error("Failed to bind {}:{}: {}", config.host, config.port, e.toString());
            System.exit(1);
        }
    }

    /** Loads the model and starts every Python worker (in parallel) before the port is bound. */
    private void load() throws Exception {
        long begin = System.currentTimeMillis();
        logger.info("Loading model {} from {} ({} worker(s), batch_size={}, max_batch_delay={} ms, options={})",
                config.modelName, config.modelDir, config.workers, config.batchSize,
                config.maxBatchDelayMillis, config.options);
        // DJL names the engine's model after the folder (its workers log as W-<pid>-<folder>); URLs use modelName.
        model = Engine.getEngine("Python").newModel(config.modelDir.getFileName().toString(), Device.cpu());
        model.load(config.modelDir, null, config.options);
        Translator<Input, Output> translator =
                new NoopServingTranslatorFactory().newInstance(Input.class, Output.class, model, Map.of());
        pool.start(model, translator, config, adapters::list);
        logger.info("Model {} loaded in {} ms", config.modelName, System.currentTimeMillis() - begin);
    }

    /** Shutdown hook: no Python worker may outlive the JVM. */
    private void shutdown() {
        logger.info("Shutting down");
        routes.stop();
        pool.close();
        if (model != null) {
            model.close();
        }
        // Safety net for a worker caught mid-start or mid-restart: only this JVM's own children.
        ProcessHandle.current().descendants().forEach(ProcessHandle::destroyForcibly);
        logger.info("Shutdown complete");
    }
}
