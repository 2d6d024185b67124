package ai.loraship.host;

import ai.djl.modality.Input;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The host's record of registered LoRA adapters and the Inputs that carry adapter operations to the
 * Python handler, built the way DJL's PyAdapter builds them: properties {@code handler}, {@code name},
 * {@code alias} (and {@code src}), options as content items.
 */
final class Adapters {

    /** One registered adapter. */
    record Adapter(String name, String alias, String src, Map<String, String> options) {

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

    private final Map<String, Adapter> byName = new LinkedHashMap<>();

    synchronized Adapter get(String name) {
        return byName.get(name);
    }

    synchronized void put(Adapter adapter) {
        byName.put(adapter.name(), adapter);
    }

    synchronized void remove(String name) {
        byName.remove(name);
    }

    synchronized List<Adapter> list() {
        return new ArrayList<>(byName.values());
    }

    /** Register Inputs for every adapter, for a worker whose Python process was replaced. */
    List<Input> replayInputs() {
        List<Input> inputs = new ArrayList<>();
        for (Adapter adapter : list()) {
            inputs.add(adapter.registerInput());
        }
        return inputs;
    }
}
