package ai.loraship.host;

import ai.djl.modality.Input;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;

/**
 * The host's record of registered LoRA adapters and the Inputs that carry adapter operations to the
 * Python handler, built the way DJL's PyAdapter builds them: properties {@code handler}, {@code name},
 * {@code alias} (and {@code src}), options as content items.
 *
 * <p>The record is also kept on disk (see {@link #save}) so that adapters registered at runtime come
 * back after a full restart, not only after a worker restart.
 */
final class Adapters {

    /** One registered adapter. */
    record Adapter(String name, String alias, String src, Map<String, String> options) {

        /** DJL's Adapter.isPreload: option {@code preload}, true unless set otherwise. */
        boolean preload() {
            return Boolean.parseBoolean(options.getOrDefault("preload", "true"));
        }

        /** DJL's Adapter.isPin: option {@code pin}, false unless set otherwise. */
        boolean pin() {
            return Boolean.parseBoolean(options.getOrDefault("pin", "false"));
        }

        Input registerInput() {
            return input("register_adapter", true);
        }

        Input updateInput() {
            return input("update_adapter", true);
        }

        Input unregisterInput() {
            return input("unregister_adapter", false);
        }

        private Input input(String handler, boolean withSrc) {
            Input input = new Input();
            input.addProperty("handler", handler);
            input.addProperty("name", name);
            input.addProperty("alias", alias);
            if (withSrc) {
                input.addProperty("src", src);
                options.forEach(input::add);
            }
            return input;
        }
    }

    /** What a registry file holds: adapters in registration order, and model-dir adapters removed at runtime. */
    record Saved(List<Adapter> adapters, Set<String> removed) {}

    private static final Gson GSON = new GsonBuilder().setPrettyPrinting().disableHtmlEscaping().create();

    private final Map<String, Adapter> byName = new LinkedHashMap<>();
    /** Names of {@code adapters/} sub-folders unregistered at runtime: not registered again at start-up. */
    private final Set<String> removed = new TreeSet<>();

    synchronized Adapter get(String name) {
        return byName.get(name);
    }

    synchronized void put(Adapter adapter) {
        byName.put(adapter.name(), adapter);
        removed.remove(adapter.name());
    }

    /** Forgets an adapter; {@code fromModelDir} records the removal so a restart does not bring it back. */
    synchronized void remove(String name, boolean fromModelDir) {
        byName.remove(name);
        if (fromModelDir) {
            removed.add(name);
        }
    }

    synchronized void setRemoved(Set<String> names) {
        removed.clear();
        removed.addAll(names);
    }

    synchronized List<Adapter> list() {
        return new ArrayList<>(byName.values());
    }

    /** Writes the registry to {@code file} atomically: a complete temporary file, synced, then renamed. */
    synchronized void save(Path file) throws IOException {
        JsonObject root = new JsonObject();
        root.addProperty("version", 1);
        JsonArray list = new JsonArray();
        for (Adapter a : byName.values()) {
            JsonObject o = new JsonObject();
            o.addProperty("name", a.name());
            o.addProperty("alias", a.alias());
            o.addProperty("src", a.src());
            o.add("options", GSON.toJsonTree(a.options()));
            list.add(o);
        }
        root.add("adapters", list);
        root.add("removed", GSON.toJsonTree(removed));
        Path dir = file.toAbsolutePath().getParent();
        Files.createDirectories(dir);
        Path tmp = Files.createTempFile(dir, ".adapters-", ".tmp");
        try {
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.WRITE)) {
                ch.write(ByteBuffer.wrap((GSON.toJson(root) + "\n").getBytes(StandardCharsets.UTF_8)));
                ch.force(true);
            }
            Files.move(tmp, file, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    /** Reads a registry file written by {@link #save}; an absent file is an empty registry. */
    static Saved load(Path file) throws IOException {
        List<Adapter> adapters = new ArrayList<>();
        Set<String> removed = new TreeSet<>();
        if (!Files.isRegularFile(file)) {
            return new Saved(adapters, removed);
        }
        try {
            JsonObject root = JsonParser.parseString(Files.readString(file, StandardCharsets.UTF_8)).getAsJsonObject();
            if (root.has("adapters")) {
                for (JsonElement e : root.getAsJsonArray("adapters")) {
                    JsonObject o = e.getAsJsonObject();
                    String name = o.get("name").getAsString();
                    String alias = o.has("alias") ? o.get("alias").getAsString() : name;
                    Map<String, String> options = new LinkedHashMap<>();
                    if (o.has("options")) {
                        o.getAsJsonObject("options").entrySet()
                                .forEach(x -> options.put(x.getKey(), x.getValue().getAsString()));
                    }
                    adapters.add(new Adapter(name, alias, o.get("src").getAsString(), options));
                }
            }
            if (root.has("removed")) {
                root.getAsJsonArray("removed").forEach(x -> removed.add(x.getAsString()));
            }
        } catch (RuntimeException e) { // malformed JSON, or values of the wrong type or missing
            throw new IOException("not a registry file written by this host: " + e, e);
        }
        return new Saved(adapters, removed);
    }
}
