package ai.loraship.host;

import java.io.IOException;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;

/**
 * Start-up settings: command-line arguments plus the model's {@code serving.properties}, read the way
 * DJL Serving's ModelInfo reads them ({@code option.X} keys become engine options {@code X}).
 */
final class HostConfig {

    final Path modelDir;
    /** The name in URLs ({@code /predictions/{name}}, {@code /models/{name}}), DJL Serving's by default. */
    final String modelName;
    /** The model dir as DJL Serving reports it in {@code modelUrl}: {@code file:/abs/dir/}. */
    final String modelUrl;
    final String host;
    final int port;
    /** Engine options handed to {@code Model.load}: Strings only, as PyModel casts them. */
    final Map<String, String> options = new TreeMap<>();
    final int batchSize;
    final int maxBatchDelayMillis;
    final int workers;
    /** DJL's max_idle_time (default 60 s): reported by GET /models/{m}; the host never scales workers down. */
    final int maxIdleSeconds;
    final int jobQueueSize;
    final long maxRequestSize;
    final int chunkedReadTimeoutSeconds;
    /** Seconds a request may run in the worker (DJL's option.predict_timeout); used in error messages. */
    final int predictTimeoutSeconds;
    /** Where adapters registered at runtime are recorded, so that a restart registers them again. */
    final Path adapterRegistry;

    private HostConfig(String[] args) throws IOException {
        String dir = null;
        String name = null;
        String bindHost = "127.0.0.1";
        int bindPort = 8080;
        for (int i = 0; i < args.length; i++) {
            String arg = args[i];
            if (i + 1 >= args.length) {
                throw new IllegalArgumentException("Missing value for " + arg + "\n" + usage());
            }
            String value = args[++i];
            switch (arg) {
                case "--model-dir" -> dir = value;
                case "--model-name" -> name = value;
                case "--host" -> bindHost = value;
                case "--port" -> bindPort = Integer.parseInt(value);
                default -> throw new IllegalArgumentException("Unknown argument " + arg + "\n" + usage());
            }
        }
        if (dir == null) {
            throw new IllegalArgumentException("--model-dir is required\n" + usage());
        }
        modelDir = Paths.get(dir).toAbsolutePath().normalize();
        if (!Files.isDirectory(modelDir)) {
            throw new IllegalArgumentException("Model dir not found: " + modelDir);
        }
        modelName = name != null ? name : djlModelName(modelDir);
        modelUrl = modelDir.toUri().toURL().toString();
        host = bindHost;
        port = bindPort;

        Properties prop = new Properties();
        Path file = modelDir.resolve("serving.properties");
        if (Files.isRegularFile(file)) {
            try (Reader reader = Files.newBufferedReader(file, StandardCharsets.UTF_8)) {
                prop.load(reader);
            }
        }
        // Like ModelInfo: OPTION_X environment variables fill in options the file does not set.
        for (Map.Entry<String, String> env : System.getenv().entrySet()) {
            String key = env.getKey();
            if (key.startsWith("OPTION_") && !env.getValue().isEmpty()) {
                key = key.substring(7);
                if (key.matches("[A-Z0-9_]+")) {
                    key = key.toLowerCase(Locale.ROOT);
                }
                if ("entrypoint".equals(key)) {
                    key = "entryPoint";
                }
                if ("engine".equals(key)) {
                    prop.putIfAbsent("engine", env.getValue());
                } else {
                    prop.putIfAbsent("option." + key, env.getValue());
                }
            }
        }
        String engine = prop.getProperty("engine", "Python");
        if (!"Python".equals(engine)) {
            throw new IllegalArgumentException(
                    "serving.properties sets engine=" + engine + ": this host only runs engine=Python");
        }
        for (String key : prop.stringPropertyNames()) {
            if (key.startsWith("option.")) {
                options.put(key.substring(7), prop.getProperty(key).trim());
            }
        }
        batchSize = Math.max(1, intSetting(prop, "batch_size", 1));
        maxBatchDelayMillis = Math.max(0, intSetting(prop, "max_batch_delay", 100));
        int min = intSetting(prop, "minWorkers", 1);
        workers = Math.max(1, Math.max(min, intSetting(prop, "maxWorkers", 1)));
        jobQueueSize = Math.max(1, intSetting(prop, "job_queue_size", 1000));
        maxIdleSeconds = intSetting(prop, "max_idle_time", 60);
        maxRequestSize = Long.parseLong(setting(prop, "max_request_size", "67108864"));
        chunkedReadTimeoutSeconds = intSetting(prop, "chunked_read_timeout", 120);
        predictTimeoutSeconds = parseInt("option.predict_timeout", options.getOrDefault("predict_timeout", "120"));
        // SERVING_ADAPTER_REGISTRY or adapter_registry=PATH (relative to the model dir) moves it, e.g. off a
        // read-only model dir.
        String registry = setting(prop, "adapter_registry", "");
        adapterRegistry = registry.isEmpty()
                ? modelDir.resolve(".loraship").resolve("adapters.json")
                : modelDir.resolve(registry).toAbsolutePath().normalize();
    }

    /**
     * The name DJL Serving gives a model dir found in its model store: the folder's name with every
     * character that is not an ASCII word character (and a leading {@code _}) replaced by {@code _},
     * so folder {@code md-ad} is served as {@code md_ad}.
     */
    static String djlModelName(Path dir) {
        return dir.getFileName().toString().replaceAll("(\\W|^_)", "_");
    }

    static HostConfig parse(String[] args) throws IOException {
        return new HostConfig(args);
    }

    boolean loraEnabled() {
        return Boolean.parseBoolean(options.getOrDefault("enable_lora", "false"));
    }

    /** SERVING_KEY (snake-cased, upper case) overrides the file, as DJL Serving's env config does. */
    private static String setting(Properties prop, String key, String def) {
        String envKey = "SERVING_" + key.replaceAll("([a-z])([A-Z])", "$1_$2").toUpperCase(Locale.ROOT);
        String env = System.getenv(envKey);
        if (env != null && !env.isBlank()) {
            return env.trim();
        }
        return prop.getProperty(key, def).trim();
    }

    private static int intSetting(Properties prop, String key, int def) {
        return parseInt(key, setting(prop, key, String.valueOf(def)));
    }

    private static int parseInt(String key, String value) {
        try {
            return Integer.parseInt(value);
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("Invalid " + key + ": " + value, e);
        }
    }

    private static String usage() {
        return "usage: DjlHost --model-dir DIR [--host 127.0.0.1] [--port 8080] [--model-name NAME]";
    }
}
