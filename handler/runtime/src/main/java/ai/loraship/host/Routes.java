package ai.loraship.host;

import ai.djl.Device;
import ai.loraship.host.Http.Page;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Date;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicInteger;

import static ai.loraship.host.Http.methodNotAllowed;
import static ai.loraship.host.Http.modelNotFound;
import static ai.loraship.host.Http.notFound;
import static ai.loraship.host.Http.obj;
import static ai.loraship.host.Http.requireMethod;
import static ai.loraship.host.Http.sendError;
import static ai.loraship.host.Http.sendJson;

/**
 * The HTTP server and its routes, as DJL Serving routes its URLs: inference ({@code /invocations},
 * {@code /v1/chat/completions}, {@code /predictions/{m}}, {@code /models/{m}/invoke}) goes to {@link Inference},
 * the adapter API to {@link AdapterApi}; the health check and the management API (list and describe
 * the model) are answered here.
 */
final class Routes {

    // The lines logged here were DjlHost's: they keep its logger name, so the server log reads as before.
    private static final Logger logger = LoggerFactory.getLogger(DjlHost.class);
    private static final int SHUTDOWN_GRACE_SECONDS = 5;

    private final HostConfig config;
    private final Worker.Pool pool;
    private final Inference inference;
    private final AdapterApi adapterApi;
    private final AtomicInteger inFlight = new AtomicInteger();
    private volatile boolean stopping;
    private HttpServer server;

    Routes(HostConfig config, Worker.Pool pool, Inference inference, AdapterApi adapterApi) {
        this.config = config;
        this.pool = pool;
        this.inference = inference;
        this.adapterApi = adapterApi;
    }

    /** Binds the port and starts answering; called once the workers are up. */
    void bind() throws IOException {
        server = HttpServer.create(new InetSocketAddress(config.host, config.port), 128);
        AtomicInteger count = new AtomicInteger();
        // Request threads block on their job; the queue, not the pool, bounds the load.
        server.setExecutor(Executors.newCachedThreadPool(r -> {
            Thread t = new Thread(r, "http-" + count.incrementAndGet());
            t.setDaemon(true);
            return t;
        }));
        server.createContext("/", this::handle);
        server.start();
        logger.info("Model server started. Listening on http://{}:{}", config.host,
                server.getAddress().getPort());
    }

    /** Answers new requests with 503, lets those in flight finish for a while, then closes the port. */
    void stop() {
        // New requests get 503 while those in flight finish (the workers still run). Counted here
        // because JDK 17's HttpServer.stop(delay) always waits the whole delay.
        stopping = true;
        long deadline = System.currentTimeMillis() + SHUTDOWN_GRACE_SECONDS * 1000L;
        while (inFlight.get() > 0 && System.currentTimeMillis() < deadline) {
            try {
                Thread.sleep(20);
            } catch (InterruptedException e) {
                break;
            }
        }
        if (server != null) {
            server.stop(0);
        }
    }

    private void handle(HttpExchange ex) throws IOException {
        inFlight.incrementAndGet();
        try (ex) {
            try {
                route(ex);
            } catch (IOException e) {
                throw e; // the JDK server closes the connection, which is how an aborted stream shows
            } catch (Exception e) {
                logger.error("Unexpected error on {}", ex.getRequestURI(), e);
                sendError(ex, 500, e.getClass().getSimpleName(), String.valueOf(e.getMessage()));
            }
        } finally {
            inFlight.decrementAndGet();
        }
    }

    private void route(HttpExchange ex) throws Exception {
        if (stopping) {
            sendError(ex, 503, "ServiceUnavailableException", "Server is shutting down");
            return;
        }
        String[] seg = Arrays.stream(ex.getRequestURI().getRawPath().split("/"))
                .filter(s -> !s.isEmpty())
                .map(s -> URLDecoder.decode(s, StandardCharsets.UTF_8))
                .toArray(String[]::new);
        String method = ex.getRequestMethod();
        String root = seg.length > 0 ? seg[0] : "";
        switch (root) {
            case "ping" -> ping(ex); // DJL answers /ping and /ping/... whatever the method
            case "invocations" -> {
                if (seg.length > 1) {
                    notFound(ex);
                } else if (requireMethod(ex, method, "POST")) {
                    predict(ex);
                }
            }
            // DJL Serving 0.36.0 routes OpenAI's chat completions exactly as /invocations: the same Input, the body
            // unchanged, nothing that names the route (the handler reads a body with "messages" as chat).
            // /v1/models and /v1/completions are not served, as on DJL.
            case "v1" -> {
                if (seg.length != 3 || !"chat".equals(seg[1]) || !"completions".equals(seg[2])) {
                    notFound(ex);
                } else if (requireMethod(ex, method, "POST")) {
                    predict(ex);
                }
            }
            case "predictions" -> {
                if (seg.length < 2) {
                    notFound(ex);
                } else if (!config.modelName.equals(seg[1])) {
                    modelNotFound(ex, seg[1]);
                } else if (requireMethod(ex, method, "POST")) {
                    predict(ex);
                }
            }
            case "models" -> routeModels(ex, method, seg);
            case "server" -> {
                if (seg.length != 2 || !"metrics".equals(seg[1])) {
                    notFound(ex);
                } else if (requireMethod(ex, method, "GET")) {
                    metrics(ex);
                }
            }
            // The short form: DJL allows it when the server has a single start-up model, as here.
            case "adapters" -> adapterApi.route(ex, method, config.modelName, Arrays.copyOfRange(seg, 1, seg.length));
            default -> notFound(ex);
        }
    }

    /**
     * {@code /models...} as DJL Serving routes it: {@code /models/{m}/adapters...} is the adapter API,
     * {@code /models/{m}/invoke} an inference request, the rest the management API (list, describe).
     */
    private void routeModels(HttpExchange ex, String method, String[] seg) throws Exception {
        if (seg.length >= 3 && "adapters".equals(seg[2])) {
            adapterApi.route(ex, method, seg[1], Arrays.copyOfRange(seg, 3, seg.length));
        } else if (seg.length >= 3 && "invoke".equals(seg[seg.length - 1]) && ex.getRequestURI().getRawQuery() == null) {
            // DJL's inference pattern /models/.+/invoke is matched on the whole URI: any method, no query string.
            if (config.modelName.equals(seg[1])) {
                predict(ex);
            } else {
                modelNotFound(ex, seg[1]);
            }
        } else if (seg.length >= 2 && ("PUT".equals(method) || "DELETE".equals(method))
                && !config.modelName.equals(seg[1])) {
            modelNotFound(ex, seg[1]);
        } else if (!"GET".equals(method)) {
            // DJL's POST /models registers a model, PUT /models/{m} scales it and DELETE unregisters it:
            // the host serves one fixed model, so these are not allowed here.
            methodNotAllowed(ex);
        } else if (seg.length == 1) {
            listModels(ex);
        } else if (!config.modelName.equals(seg[1])) {
            sendError(ex, 404, "ModelNotFoundException", "Workflow not found: " + seg[1]);
        } else if (seg.length > 2) {
            // A version: the model has none, so DJL finds no workflow (and doubles its message's prefix).
            sendError(ex, 404, "ModelNotFoundException",
                    "Workflow not found: Workflow not found: " + seg[1] + "/" + seg[2]);
        } else {
            sendJson(ex, 200, List.of(describeWorkflow()));
        }
    }

    /** An inference request; its status counts in DJL's Response_2XX/4XX/5XX (404s for unknown routes do not). */
    private void predict(HttpExchange ex) throws Exception {
        try {
            inference.predict(ex);
        } finally {
            Prometheus.get().response(ex.getResponseCode());
        }
    }

    /**
     * GET /server/metrics: the Prometheus text exposition, filtered by {@code ?name[]=} (names without
     * {@code _total}) as DJL filters it; DJL's 400 when SERVING_PROMETHEUS is not true.
     */
    private void metrics(HttpExchange ex) throws IOException {
        Prometheus prometheus = Prometheus.get();
        if (!prometheus.enabled()) {
            sendError(ex, 400, "BadRequestException", "Prometheus is not enabled, set SERVING_PROMETHEUS "
                    + "environment var to true to enable prometheus metrics");
            return;
        }
        Set<String> names = new HashSet<>();
        for (String[] kv : Http.query(ex)) {
            if ("name[]".equals(kv[0])) {
                names.add(kv[1]);
            }
        }
        byte[] body = prometheus.scrape(names).getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", Prometheus.CONTENT_TYPE);
        ex.sendResponseHeaders(200, body.length == 0 ? -1 : body.length);
        if (body.length > 0) {
            ex.getResponseBody().write(body);
        }
    }

    /** GET /models: DJL's ListModelsResponse, paginated with {@code limit} and {@code next_page_token}. */
    private void listModels(HttpExchange ex) throws IOException {
        Page page = Page.of(ex, 1);
        if (page == null) {
            return;
        }
        List<Map<String, Object>> models = new ArrayList<>();
        for (int i = page.first(); i < page.last(); i++) {
            // version is null, so left out, as DJL's Gson leaves it out. The model stays READY while a worker
            // restarts, as in DJL below its retry_threshold (the host never gives up on a worker).
            models.add(obj("modelName", config.modelName, "modelUrl", config.modelUrl, "status", "READY"));
        }
        Map<String, Object> body = new LinkedHashMap<>();
        if (page.nextPageToken() != null) {
            body.put("nextPageToken", page.nextPageToken());
        }
        body.put("models", models);
        sendJson(ex, 200, body);
    }

    /**
     * GET /models/{m}: one element of DJL's DescribeWorkflowResponse array. While a worker is not ready
     * (its Python process restarting, or its adapters not yet registered again) the model is Unhealthy,
     * DJL's word for a pool short of running workers, and that worker UNLOADING, DJL's word for a worker
     * thread that is not running. The host runs CPU workers only.
     */
    private Map<String, Object> describeWorkflow() {
        boolean healthy = pool.healthy();
        List<Map<String, Object>> workerList = new ArrayList<>();
        for (Worker w : pool.workers()) {
            workerList.add(obj("id", w.id() + 1, "startTime", new Date(w.startTime()),
                    "status", w.isHealthy() ? "READY" : "UNLOADING"));
        }
        Device device = Device.cpu();
        Map<String, Object> group = obj(
                "device", obj("deviceType", device.getDeviceType(), "deviceId", device.getDeviceId()),
                "minWorkers", pool.workers().size(),
                "maxWorkers", pool.workers().size(),
                "workers", workerList);
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("modelName", config.modelName);
        m.put("modelUrl", config.modelUrl);
        m.put("batchSize", config.batchSize);
        m.put("maxBatchDelayMillis", config.maxBatchDelayMillis);
        m.put("maxIdleSeconds", config.maxIdleSeconds);
        m.put("queueSize", config.jobQueueSize);
        m.put("requestInQueue", pool.queued());
        m.put("status", healthy ? "Healthy" : "Unhealthy");
        m.put("loadedAtStartup", true);
        m.put("workerGroups", List.of(group));
        return obj("workflowName", config.modelName, "models", List.of(m));
    }

    // ---- health --------------------------------------------------------------------------------

    /**
     * DJL's body, {@code {"<model>": {"status": ...}}}: 200 and Healthy when every worker is ready (and,
     * after a restart, has its adapters back). Otherwise 500 and Unhealthy: DJL's word for a pool short
     * of running workers, with the code DJL sends for it under SAGEMAKER_HEALTH_CHECK_OVERRIDE (and for
     * a FAILED model). Without that setting DJL answers such a pool with 200; the host keeps 200 for
     * "ready to serve", which its callers wait for after a restart.
     */
    private void ping(HttpExchange ex) throws IOException {
        boolean ok = pool.healthy();
        sendJson(ex, ok ? 200 : 500, Map.of(config.modelName, obj("status", ok ? "Healthy" : "Unhealthy")));
    }
}
