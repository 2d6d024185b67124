package ai.loraship.host;

import ai.djl.modality.Input;
import ai.djl.modality.Output;
import ai.loraship.host.Http.Page;

import com.sun.net.httpserver.HttpExchange;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.IOException;
import java.net.URI;
import java.net.URISyntaxException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;
import java.util.function.Supplier;
import java.util.stream.Stream;

import static ai.loraship.host.Http.methodNotAllowed;
import static ai.loraship.host.Http.obj;
import static ai.loraship.host.Http.query;
import static ai.loraship.host.Http.requiredParam;
import static ai.loraship.host.Http.sendError;
import static ai.loraship.host.Http.sendException;
import static ai.loraship.host.Http.sendJson;
import static ai.loraship.host.Http.singleParams;
import static ai.loraship.host.Http.validCode;

/**
 * Adapter operations on every worker: the adapters registered at start-up, and the adapter API at
 * {@code /models/{m}/adapters} and {@code /adapters}. Each change is kept in {@link Adapters} and
 * written to the registry file.
 *
 * <p>The API behaves as DJL Serving's AdapterManagementRequestHandler: the same checks in the same
 * order, its bodies (ListAdaptersResponse, DescribeAdapterResponse, StatusResponse, ErrorResponse)
 * and codes.
 */
final class AdapterApi {

    // The lines logged here were DjlHost's: they keep its logger name, so the server log reads as before.
    private static final Logger logger = LoggerFactory.getLogger(DjlHost.class);

    private static final String ALREADY_EXISTS = " already exists. If you want to replace it, please unregistering"
            + " before registering a new adapter with the same name.";

    private final HostConfig config;
    private final Adapters adapters;
    private final Worker.Pool pool;
    /** Adapter operations run one at a time so every worker sees them in the same order. */
    private final Object adapterLock = new Object();

    AdapterApi(HostConfig config, Adapters adapters, Worker.Pool pool) {
        this.config = config;
        this.adapters = adapters;
        this.pool = pool;
    }

    /**
     * With enable_lora, registers each sub-folder of adapters/ (DJL Serving does the same), then the
     * adapters recorded in the registry file by earlier runs: a restart loses no adapter registered,
     * updated or removed at runtime. A recorded adapter that no longer loads is logged and skipped.
     */
    void registerAtStartup() throws Exception {
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
                Output failure = pool.onAll(adapter::registerInput);
                if (failure.getCode() >= 300) {
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
                failure = pool.onAll(current == null ? adapter::registerInput : adapter::updateInput);
            } catch (ExecutionException e) {
                failure = new Output(503, String.valueOf(e.getCause()));
            }
            if (failure.getCode() >= 300) {
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

    /** The adapter API, {@code rest} being what follows {@code /adapters}; dispatched on the method first, as DJL does. */
    void route(HttpExchange ex, String method, String model, String[] rest) throws Exception {
        String alias = ex.getRequestHeaders().getFirst("X-Amzn-SageMaker-Adapter-Alias");
        if (rest.length == 0) {
            switch (method) {
                case "GET" -> listAdapters(ex, model);
                case "POST" -> registerAdapter(ex, model, alias);
                default -> methodNotAllowed(ex);
            }
        } else if ("GET".equals(method)) {
            describeAdapter(ex, model, rest[0], alias);
        } else if (rest.length == 2 && "POST".equals(method) && "update".equalsIgnoreCase(rest[1])) {
            updateAdapter(ex, model, rest[0], alias);
        } else if ("DELETE".equals(method)) {
            unregisterAdapter(ex, model, rest[0], alias);
        } else {
            methodNotAllowed(ex);
        }
    }

    /** DJL's checks before any adapter operation: the model exists, then it has LoRA enabled. */
    private boolean adapterApiOpen(HttpExchange ex, String model) throws IOException {
        if (!config.modelName.equals(model)) {
            sendError(ex, 404, "BadRequestException", "The model " + model + " was not found");
            return false;
        }
        if (!config.loraEnabled()) {
            sendError(ex, 400, "BadRequestException", "LoRA is not enabled.");
            return false;
        }
        return true;
    }

    private static Map<String, Object> adapterJson(Adapters.Adapter a) {
        return obj("name", a.name(), "src", a.src(), "preload", a.preload(), "pin", a.pin());
    }

    private void listAdapters(HttpExchange ex, String model) throws IOException {
        if (!adapterApiOpen(ex, model)) {
            return;
        }
        List<Adapters.Adapter> all = adapters.list();
        Page page = Page.of(ex, all.size());
        if (page == null) {
            return;
        }
        List<Map<String, Object>> list = new ArrayList<>();
        for (int i = page.first(); i < page.last(); i++) {
            list.add(adapterJson(all.get(i)));
        }
        Map<String, Object> body = new LinkedHashMap<>();
        if (page.nextPageToken() != null) {
            body.put("nextPageToken", page.nextPageToken());
        }
        body.put("adapters", list);
        sendJson(ex, 200, body);
    }

    private void describeAdapter(HttpExchange ex, String model, String name, String alias) throws IOException {
        if (!adapterApiOpen(ex, model)) {
            return;
        }
        Adapters.Adapter a = adapters.get(name);
        if (a == null) {
            adapterNotFound(ex, name, alias);
            return;
        }
        sendJson(ex, 200, adapterJson(a));
    }

    /**
     * As DJL: name and src are required, every single-valued query parameter is an option, the Python
     * handler is asked first, and only an adapter it accepted can then clash with a registered name (409).
     */
    private void registerAdapter(HttpExchange ex, String model, String alias) throws Exception {
        if (!adapterApiOpen(ex, model)) {
            return;
        }
        List<String[]> query = query(ex);
        String name = requiredParam(ex, query, "name");
        String src = name == null ? null : requiredParam(ex, query, "src");
        if (src == null) {
            return;
        }
        try {
            String scheme = new URI(src).getScheme();
            if (scheme != null && !"file".equals(scheme)) {
                sendError(ex, 409, "IllegalArgumentException", "URL adapters are not currently supported");
                return;
            }
        } catch (URISyntaxException ignored) {
            // not a URI: a path
        }
        synchronized (adapterLock) {
            Adapters.Adapter adapter =
                    new Adapters.Adapter(name, alias == null ? name : alias, src, singleParams(query));
            Output out = runAdapterOp(ex, adapter::registerInput);
            if (out == null) {
                return;
            }
            if (adapters.get(name) != null) {
                sendError(ex, 409, "IllegalArgumentException", "The adapter " + adapter.alias() + ALREADY_EXISTS);
                return;
            }
            adapters.put(adapter);
            persistAdapters();
            sendStatus(ex, out);
        }
    }

    private void updateAdapter(HttpExchange ex, String model, String name, String alias) throws Exception {
        if (!adapterApiOpen(ex, model)) {
            return;
        }
        Map<String, String> params = singleParams(query(ex));
        synchronized (adapterLock) {
            Adapters.Adapter old = adapters.get(name);
            if (old == null) {
                adapterNotFound(ex, name, alias);
                return;
            }
            Map<String, String> options = new LinkedHashMap<>(old.options());
            options.putAll(params);
            String src = options.getOrDefault("src", old.src());
            Adapters.Adapter adapter = new Adapters.Adapter(name, alias == null ? old.alias() : alias, src, options);
            Output out = runAdapterOp(ex, adapter::updateInput);
            if (out == null) {
                return;
            }
            adapters.put(adapter);
            persistAdapters();
            sendStatus(ex, out);
        }
    }

    private void unregisterAdapter(HttpExchange ex, String model, String name, String alias) throws Exception {
        if (!adapterApiOpen(ex, model)) {
            return;
        }
        synchronized (adapterLock) {
            Adapters.Adapter adapter = adapters.get(name);
            if (adapter == null) {
                adapterNotFound(ex, name, alias);
                return;
            }
            Adapters.Adapter target = alias == null ? adapter
                    : new Adapters.Adapter(name, alias, adapter.src(), adapter.options());
            Output out = runAdapterOp(ex, target::unregisterInput);
            if (out == null) {
                return;
            }
            adapters.remove(name, Files.isDirectory(config.modelDir.resolve("adapters").resolve(name)));
            persistAdapters();
            sendStatus(ex, out);
        }
    }

    private static void adapterNotFound(HttpExchange ex, String name, String alias) throws IOException {
        sendError(ex, 404, "BadRequestException", "The adapter " + (alias == null ? name : alias) + " was not found");
    }

    /** DJL's answer to an adapter operation the handler accepted: its Output's message and code. */
    private static void sendStatus(HttpExchange ex, Output out) throws IOException {
        sendJson(ex, validCode(out.getCode()), obj("status", out.getMessage()));
    }

    /**
     * Runs an adapter operation on every worker. Returns the first worker's Output when every worker
     * accepted it; otherwise answers the request and returns null: a handler refusal (code >= 300) is
     * DJL's {@code BadRequestException} with the Output's code and message.
     */
    private Output runAdapterOp(HttpExchange ex, Supplier<Input> input) throws IOException {
        Output out;
        try {
            out = pool.onAll(input);
        } catch (ExecutionException e) {
            sendException(ex, e.getCause(), config.predictTimeoutSeconds);
            return null;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            sendException(ex, e, config.predictTimeoutSeconds);
            return null;
        }
        if (out.getCode() >= 300) {
            sendError(ex, validCode(out.getCode()), "BadRequestException", out.getMessage());
            return null;
        }
        return out;
    }
}
