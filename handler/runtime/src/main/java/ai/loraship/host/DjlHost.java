package ai.loraship.host;

import ai.djl.Device;
import ai.djl.Model;
import ai.djl.engine.Engine;
import ai.djl.engine.EngineException;
import ai.djl.inference.streaming.ChunkedBytesSupplier;
import ai.djl.modality.Input;
import ai.djl.modality.Output;
import ai.djl.ndarray.BytesSupplier;
import ai.djl.translate.NoopServingTranslatorFactory;
import ai.djl.translate.TranslateException;
import ai.djl.translate.Translator;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.sun.net.httpserver.Headers;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.UUID;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Supplier;
import java.util.stream.Stream;

/**
 * A small stand-in for DJL Serving's ModelServer that serves one Python model over HTTP on top of
 * DJL's real Python engine, so the handler sees exactly the DJL contract (Input/Output, static
 * batching, adapter operations, streaming).
 *
 * <p>Usage: {@code java -cp 'lib/host:lib/djl/*' ai.loraship.host.DjlHost --model-dir DIR
 * [--host 127.0.0.1] [--port 8080] [--model-name NAME]}
 */
public final class DjlHost {

    static {
        // Timestamps on the console; set before the first logger is created.
        System.setProperty(
                "org.slf4j.simpleLogger.showDateTime",
                System.getProperty("org.slf4j.simpleLogger.showDateTime", "true"));
        System.setProperty(
                "org.slf4j.simpleLogger.dateTimeFormat",
                System.getProperty("org.slf4j.simpleLogger.dateTimeFormat", "HH:mm:ss.SSS"));
    }

    private static final Logger logger = LoggerFactory.getLogger(DjlHost.class);
    private static final int SHUTDOWN_GRACE_SECONDS = 5;
    private static final Gson GSON = new GsonBuilder().disableHtmlEscaping().create();

    private final HostConfig config;
    private final BlockingQueue<Worker.Job> jobs;
    private final List<Worker> workers = new CopyOnWriteArrayList<>();
    private final Adapters adapters = new Adapters();
    /** Adapter operations run one at a time so every worker sees them in the same order. */
    private final Object adapterLock = new Object();
    private final boolean allowHandlerOverride =
            Boolean.parseBoolean(System.getenv("ALLOW_REQUEST_HANDLER_OVERRIDE"));
    private final AtomicInteger inFlight = new AtomicInteger();
    private volatile boolean stopping;
    private Model model;
    private HttpServer server;

    private DjlHost(HostConfig config) {
        this.config = config;
        this.jobs = new ArrayBlockingQueue<>(config.jobQueueSize);
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
            host.registerStartupAdapters();
        } catch (Throwable t) {
            logger.error("Failed to load model {} from {}: {}", config.modelName, config.modelDir, t.toString(), t);
            System.exit(1);
        }
        try {
            host.bind();
        } catch (IOException e) {
            logger.error("Failed to bind {}:{}: {}", config.host, config.port, e.toString());
            System.exit(1);
        }
    }

    // ---- start-up and shutdown ---------------------------------------------------------------

    /** Loads the model and starts every Python worker (in parallel) before the port is bound. */
    private void load() throws Exception {
        long begin = System.currentTimeMillis();
        logger.info("Loading model {} from {} ({} worker(s), batch_size={}, max_batch_delay={} ms, options={})",
                config.modelName, config.modelDir, config.workers, config.batchSize,
                config.maxBatchDelayMillis, config.options);
        model = Engine.getEngine("Python").newModel(config.modelName, Device.cpu());
        model.load(config.modelDir, null, config.options);
        Translator<Input, Output> translator =
                new NoopServingTranslatorFactory().newInstance(Input.class, Output.class, model, Map.of());
        List<CompletableFuture<Void>> starts = new ArrayList<>();
        for (int i = 0; i < config.workers; i++) {
            Worker worker = new Worker(i, model, translator, jobs, config, adapters::list,
                    () -> workers.stream().anyMatch(Worker::isHealthy));
            workers.add(worker);
            starts.add(CompletableFuture.runAsync(worker::start));
        }
        try {
            CompletableFuture.allOf(starts.toArray(CompletableFuture<?>[]::new)).join();
        } catch (RuntimeException e) {
            throw e.getCause() instanceof Exception cause ? cause : e;
        }
        logger.info("Model {} loaded in {} ms", config.modelName, System.currentTimeMillis() - begin);
    }

    /**
     * With enable_lora, registers each sub-folder of adapters/ (DJL Serving does the same), then the
     * adapters recorded in the registry file by earlier runs: a restart loses no adapter registered,
     * updated or removed at runtime. A recorded adapter that no longer loads is logged and skipped.
     */
    private void registerStartupAdapters() throws Exception {
        if (!config.loraEnabled()) {
            return;
        }
        Adapters.Saved saved;
        try {
            saved = Adapters.load(config.adapterRegistry);
        } catch (IOException e) {
            logger.error("Adapter registry {} is unreadable, ignoring it: {}", config.adapterRegistry, e.getMessage());
            saved = new Adapters.Saved(List.of(), Set.of());
        }
        Path dir = config.modelDir.resolve("adapters");
        Set<String> folders = new TreeSet<>();
        if (Files.isDirectory(dir)) {
            List<Path> dirs;
            try (Stream<Path> list = Files.list(dir)) {
                dirs = list.filter(Files::isDirectory).sorted().toList();
            }
            for (Path path : dirs) {
                String name = path.getFileName().toString();
                folders.add(name);
                if (saved.removed().contains(name)) {
                    logger.info("Adapter {} in adapters/ was unregistered at runtime: not registered", name);
                    continue;
                }
                Adapters.Adapter adapter =
                        new Adapters.Adapter(name, name, path.toAbsolutePath().toString(), Map.of());
                Output failure = onAllWorkers(adapter::registerInput);
                if (failure != null) {
                    throw new IllegalStateException("Adapter " + name + " failed to register: "
                            + failure.getCode() + " " + failure.getMessage());
                }
                adapters.put(adapter);
                logger.info("Adapter {} registered from {}", name, adapter.src());
            }
        }
        Set<String> removed = new TreeSet<>(saved.removed());
        removed.retainAll(folders);
        adapters.setRemoved(removed);
        for (Adapters.Adapter adapter : saved.adapters()) {
            Adapters.Adapter current = adapters.get(adapter.name());
            if (adapter.equals(current)) {
                continue;
            }
            Output failure;
            try {
                failure = onAllWorkers(current == null ? adapter::registerInput : adapter::updateInput);
            } catch (ExecutionException e) {
                failure = new Output(503, String.valueOf(e.getCause()));
            }
            if (failure != null) {
                logger.error("Adapter {} from the registry could not be restored from {}, skipped: {} {}",
                        adapter.name(), adapter.src(), failure.getCode(), failure.getMessage());
                continue;
            }
            adapters.put(adapter);
            logger.info("Adapter {} restored from {}", adapter.name(), adapter.src());
        }
    }

    /** Records the adapters after a change; a failure to write is logged, the change stands. */
    private void persistAdapters() {
        try {
            adapters.save(config.adapterRegistry);
        } catch (IOException | RuntimeException e) {
            logger.warn("Could not write the adapter registry {}: {}; a restart will not restore this change",
                    config.adapterRegistry, e.toString());
        }
    }

    private void bind() throws IOException {
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

    /** Shutdown hook: no Python worker may outlive the JVM. */
    private void shutdown() {
        logger.info("Shutting down");
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
        workers.forEach(Worker::requestStop);
        for (Worker worker : workers) {
            try {
                worker.close();
            } catch (RuntimeException e) {
                logger.warn("Failed to stop a worker", e);
            }
        }
        if (model != null) {
            model.close();
        }
        // Safety net for a worker caught mid-start or mid-restart: only this JVM's own children.
        ProcessHandle.current().descendants().forEach(ProcessHandle::destroyForcibly);
        logger.info("Shutdown complete");
    }

    // ---- routing -------------------------------------------------------------------------------

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
            case "ping" -> {
                if (seg.length > 1) {
                    notFound(ex);
                } else if (requireMethod(ex, method, "GET")) {
                    ping(ex);
                }
            }
            case "invocations" -> {
                if (seg.length > 1) {
                    notFound(ex);
                } else if (requireMethod(ex, method, "POST")) {
                    predict(ex);
                }
            }
            case "predictions" -> {
                if (seg.length < 2) {
                    notFound(ex);
                } else if (!config.modelName.equals(seg[1])) {
                    sendError(ex, 404, "ModelNotFoundException", "Model not found: " + seg[1]);
                } else if (requireMethod(ex, method, "POST")) {
                    predict(ex);
                }
            }
            case "models" -> routeModels(ex, method, seg);
            case "adapters" -> routeAdapters(ex, method, Arrays.copyOfRange(seg, 1, seg.length));
            default -> notFound(ex);
        }
    }

    private void routeModels(HttpExchange ex, String method, String[] seg) throws Exception {
        if (seg.length >= 2 && !config.modelName.equals(seg[1])) {
            sendError(ex, 404, "ModelNotFoundException", "The model " + seg[1] + " was not found");
        } else if (seg.length >= 3 && "adapters".equals(seg[2])) {
            routeAdapters(ex, method, Arrays.copyOfRange(seg, 3, seg.length));
        } else if (seg.length > 2) {
            notFound(ex);
        } else if (requireMethod(ex, method, "GET")) {
            String status = healthy() ? "READY" : "UNHEALTHY";
            if (seg.length == 1) {
                sendJson(ex, 200, obj("models", List.of(obj("modelName", config.modelName, "status", status))));
            } else {
                sendJson(ex, 200, describeModel(status));
            }
        }
    }

    private Map<String, Object> describeModel(String status) {
        List<Map<String, Object>> workerList = new ArrayList<>();
        for (int i = 0; i < workers.size(); i++) {
            workerList.add(obj("id", i, "status", workers.get(i).isHealthy() ? "READY" : "UNHEALTHY"));
        }
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("modelName", config.modelName);
        m.put("modelDir", config.modelDir.toString());
        m.put("engine", "Python");
        m.put("status", status);
        m.put("workerCount", workers.size());
        m.put("batchSize", config.batchSize);
        m.put("maxBatchDelayMillis", config.maxBatchDelayMillis);
        m.put("queueSize", config.jobQueueSize);
        m.put("queueLength", jobs.size());
        m.put("workers", workerList);
        m.put("adapters", adapters.list().stream().map(Adapters.Adapter::name).toList());
        return m;
    }

    /** The {@code /adapters...} API, with or without the {@code /models/{m}} prefix. */
    private void routeAdapters(HttpExchange ex, String method, String[] rest) throws Exception {
        if (!config.loraEnabled()) {
            sendError(ex, 400, "BadRequestException",
                    "LoRA is not enabled: set option.enable_lora=true in serving.properties");
            return;
        }
        if (rest.length == 0) {
            switch (method) {
                case "GET" -> listAdapters(ex);
                case "POST" -> registerAdapter(ex);
                default -> sendError(ex, 405, "MethodNotAllowedException", "Method not allowed: " + method);
            }
        } else if (rest.length == 1) {
            switch (method) {
                case "GET" -> describeAdapter(ex, rest[0]);
                case "DELETE" -> unregisterAdapter(ex, rest[0]);
                default -> sendError(ex, 405, "MethodNotAllowedException", "Method not allowed: " + method);
            }
        } else if (rest.length == 2 && "update".equals(rest[1])) {
            if (requireMethod(ex, method, "POST")) {
                updateAdapter(ex, rest[0]);
            }
        } else {
            notFound(ex);
        }
    }

    // ---- health --------------------------------------------------------------------------------

    private boolean healthy() {
        return !workers.isEmpty() && workers.stream().allMatch(Worker::isHealthy);
    }

    private void ping(HttpExchange ex) throws IOException {
        boolean ok = healthy();
        sendJson(ex, ok ? 200 : 503, Map.of("status", ok ? "Healthy" : "Unhealthy"));
    }

    // ---- inference -----------------------------------------------------------------------------

    private void predict(HttpExchange ex) throws Exception {
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
        byte[] body = readBody(ex);
        if (body == null) {
            sendError(ex, 413, "RequestTooLargeException",
                    "Request body exceeds max_request_size (" + config.maxRequestSize + " bytes)");
            return;
        }
        input.add("data", body);
        input.addProperty("requestId", UUID.randomUUID().toString());

        Worker.Job job = new Worker.Job(input);
        if (!jobs.offer(job)) {
            sendError(ex, 503, "WlmCapacityException",
                    "Job queue is full (job_queue_size=" + config.jobQueueSize + ")");
            return;
        }
        Output output;
        try {
            output = job.result.get();
        } catch (ExecutionException e) {
            sendException(ex, e.getCause());
            return;
        }
        sendOutput(ex, output);
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

    /** Status, headers and body from the Output, streamed when its data is chunked (see DJL's sendOutput). */
    private void sendOutput(HttpExchange ex, Output output) throws IOException {
        BytesSupplier data = output.getData();
        if (!(data instanceof ChunkedBytesSupplier chunks)) {
            sendFull(ex, output, data == null ? new byte[0] : data.getAsBytes());
            return;
        }
        OutputStream os = null;
        try {
            while (chunks.hasNext()) {
                byte[] buf = chunks.nextChunk(config.chunkedReadTimeoutSeconds, TimeUnit.SECONDS);
                if (os == null) {
                    if (!chunks.hasNext()) {
                        // One chunk only: not a stream, send a normal response.
                        sendFull(ex, output, buf == null ? new byte[0] : buf);
                        return;
                    }
                    // Code and headers are read only now: Python may set them with its first chunk.
                    copyHeaders(ex, output);
                    ex.sendResponseHeaders(output.getCode(), 0);
                    os = ex.getResponseBody();
                }
                if (buf != null && buf.length > 0) {
                    os.write(buf);
                    os.flush();
                }
            }
        } catch (InterruptedException | IllegalStateException e) {
            if (os == null) {
                sendError(ex, 503, e.getClass().getSimpleName(), "Reading the response stream failed: " + e.getMessage());
                return;
            }
            // Headers are gone: closing the connection without the last chunk tells the client.
            throw new IOException("Response stream aborted: " + e.getMessage(), e);
        }
        if (os == null) {
            sendFull(ex, output, new byte[0]);
        } else {
            os.close();
        }
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

    // ---- adapters ------------------------------------------------------------------------------

    private void listAdapters(HttpExchange ex) throws IOException {
        List<Map<String, Object>> list = new ArrayList<>();
        for (Adapters.Adapter a : adapters.list()) {
            list.add(obj("name", a.name(), "src", a.src()));
        }
        sendJson(ex, 200, Map.of("adapters", list));
    }

    private void describeAdapter(HttpExchange ex, String name) throws IOException {
        Adapters.Adapter a = adapters.get(name);
        if (a == null) {
            sendError(ex, 404, "BadRequestException", "The adapter " + name + " was not found");
            return;
        }
        sendJson(ex, 200, obj("name", a.name(), "alias", a.alias(), "src", a.src(), "options", a.options()));
    }

    private void registerAdapter(HttpExchange ex) throws Exception {
        Map<String, String> params = singleParams(ex);
        String name = params.get("name");
        String src = params.get("src");
        if (name == null || name.isEmpty() || src == null || src.isEmpty()) {
            sendError(ex, 400, "BadRequestException", "Parameters name and src are required");
            return;
        }
        synchronized (adapterLock) {
            if (adapters.get(name) != null) {
                sendError(ex, 400, "BadRequestException", "The adapter " + name + " already exists");
                return;
            }
            // Like DJL's register handler, every single-valued query parameter is an option.
            Adapters.Adapter adapter = new Adapters.Adapter(name, alias(ex, params, name), src, params);
            if (runAdapterOp(ex, adapter::registerInput)) {
                adapters.put(adapter);
                persistAdapters();
                sendJson(ex, 200, Map.of("status", "Adapter " + name + " registered"));
            }
        }
    }

    private void updateAdapter(HttpExchange ex, String name) throws Exception {
        Map<String, String> params = singleParams(ex);
        synchronized (adapterLock) {
            Adapters.Adapter old = adapters.get(name);
            if (old == null) {
                sendError(ex, 404, "BadRequestException", "The adapter " + name + " was not found");
                return;
            }
            Map<String, String> options = new LinkedHashMap<>(old.options());
            options.putAll(params);
            String src = params.getOrDefault("src", old.src());
            String alias = params.containsKey("alias") ? params.get("alias") : old.alias();
            Adapters.Adapter adapter = new Adapters.Adapter(name, alias, src, options);
            if (runAdapterOp(ex, adapter::updateInput)) {
                adapters.put(adapter);
                persistAdapters();
                sendJson(ex, 200, Map.of("status", "Adapter " + name + " updated"));
            }
        }
    }

    private void unregisterAdapter(HttpExchange ex, String name) throws Exception {
        synchronized (adapterLock) {
            Adapters.Adapter adapter = adapters.get(name);
            if (adapter == null) {
                sendError(ex, 404, "BadRequestException", "The adapter " + name + " was not found");
                return;
            }
            if (runAdapterOp(ex, adapter::unregisterInput)) {
                adapters.remove(name, Files.isDirectory(config.modelDir.resolve("adapters").resolve(name)));
                persistAdapters();
                sendJson(ex, 200, Map.of("status", "Adapter " + name + " unregistered"));
            }
        }
    }

    /** Runs an adapter operation on every worker; on failure answers the request and returns false. */
    private boolean runAdapterOp(HttpExchange ex, Supplier<Input> input) throws IOException {
        Output failure;
        try {
            failure = onAllWorkers(input);
        } catch (ExecutionException e) {
            sendException(ex, e.getCause());
            return false;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            sendException(ex, e);
            return false;
        }
        if (failure == null) {
            return true;
        }
        BytesSupplier data = failure.getData();
        if (data != null && !(data instanceof ChunkedBytesSupplier) && data.getAsBytes().length > 0) {
            sendFull(ex, failure, data.getAsBytes());
        } else {
            sendError(ex, failure.getCode(), "AdapterException", String.valueOf(failure.getMessage()));
        }
        return false;
    }

    /** Sends an input (a fresh one each) to every worker; returns the first Output with code >= 300. */
    private Output onAllWorkers(Supplier<Input> input) throws ExecutionException, InterruptedException {
        List<CompletableFuture<Output>> results = new ArrayList<>();
        for (Worker worker : workers) {
            results.add(worker.submitControl(input.get()));
        }
        Output failure = null;
        for (CompletableFuture<Output> result : results) {
            Output out = result.get();
            if (failure == null && out.getCode() >= 300) {
                failure = out;
            }
        }
        return failure;
    }

    private static String alias(HttpExchange ex, Map<String, String> params, String name) {
        String alias = params.get("alias");
        if (alias == null) {
            alias = ex.getRequestHeaders().getFirst("X-Amzn-SageMaker-Adapter-Alias");
        }
        return alias == null || alias.isEmpty() ? name : alias;
    }

    // ---- HTTP helpers --------------------------------------------------------------------------

    /** Query parameters in order, decoded as Netty's QueryStringDecoder does ({@code +} is a space). */
    private static List<String[]> query(HttpExchange ex) {
        List<String[]> params = new ArrayList<>();
        String raw = ex.getRequestURI().getRawQuery();
        if (raw == null || raw.isEmpty()) {
            return params;
        }
        for (String part : raw.split("&")) {
            if (part.isEmpty()) {
                continue;
            }
            int eq = part.indexOf('=');
            String key = eq < 0 ? part : part.substring(0, eq);
            String value = eq < 0 ? "" : part.substring(eq + 1);
            params.add(new String[] {
                URLDecoder.decode(key, StandardCharsets.UTF_8), URLDecoder.decode(value, StandardCharsets.UTF_8)
            });
        }
        return params;
    }

    /** Parameters given exactly once (DJL ignores repeated ones for adapter options). */
    private static Map<String, String> singleParams(HttpExchange ex) {
        Map<String, String> single = new LinkedHashMap<>();
        Map<String, Integer> counts = new LinkedHashMap<>();
        for (String[] kv : query(ex)) {
            single.put(kv[0], kv[1]);
            counts.merge(kv[0], 1, Integer::sum);
        }
        counts.forEach((k, n) -> {
            if (n > 1) {
                single.remove(k);
            }
        });
        return single;
    }

    private static boolean requireMethod(HttpExchange ex, String method, String expected) throws IOException {
        if (expected.equals(method)) {
            return true;
        }
        ex.getResponseHeaders().set("Allow", expected);
        sendError(ex, 405, "MethodNotAllowedException", "Method not allowed: " + method);
        return false;
    }

    private static void notFound(HttpExchange ex) throws IOException {
        sendError(ex, 404, "ResourceNotFoundException", "Requested resource is not found: " + ex.getRequestURI().getPath());
    }

    /** EngineException (worker died, timed out, restarting) is 503, TranslateException 400 as in DJL, else 500. */
    private void sendException(HttpExchange ex, Throwable t) throws IOException {
        int code = t instanceof EngineException ? 503 : t instanceof TranslateException ? 400 : 500;
        logger.warn("Request failed with {}: {}", code, t.toString());
        String type = t.getClass().getSimpleName();
        String message = String.valueOf(t.getMessage());
        if (hasCause(t, TimeoutException.class)) {
            type = "PredictTimeoutException";
            message = "The request ran longer than predict_timeout (" + config.predictTimeoutSeconds
                    + " s); its Python worker was stopped and is being restarted";
        } else if (t instanceof EngineException && message.contains("Python worker disconnected")) {
            type = "WorkerDiedException";
            message = "The Python worker exited while serving this request; it is being restarted";
        }
        sendError(ex, code, type, message);
    }

    private static boolean hasCause(Throwable t, Class<? extends Throwable> type) {
        for (Throwable c = t; c != null; c = c.getCause() == c ? null : c.getCause()) {
            if (type.isInstance(c)) {
                return true;
            }
        }
        return false;
    }

    private static void sendError(HttpExchange ex, int code, String type, String message) throws IOException {
        sendJson(ex, code, obj("code", code, "type", type, "message", message));
    }

    /** A JSON object that keeps its keys in the order given. */
    private static Map<String, Object> obj(Object... keyValues) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < keyValues.length; i += 2) {
            m.put((String) keyValues[i], keyValues[i + 1]);
        }
        return m;
    }

    private static void sendJson(HttpExchange ex, int code, Object body) throws IOException {
        byte[] bytes = GSON.toJson(body).getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "application/json");
        ex.sendResponseHeaders(code, bytes.length);
        ex.getResponseBody().write(bytes);
    }
}
