package ai.loraship.host;

import ai.djl.engine.EngineException;
import ai.djl.translate.TranslateException;
import ai.djl.util.JsonUtils;

import com.sun.net.httpserver.HttpExchange;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.IOException;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeoutException;

/**
 * What every route shares: query parameters read as DJL Serving reads them, and its answers (status
 * codes, error bodies, JSON) written as DJL's NettyUtils writes them.
 */
final class Http {

    // The lines logged here were DjlHost's: they keep its logger name, so the server log reads as before.
    private static final Logger logger = LoggerFactory.getLogger(DjlHost.class);

    private Http() {}

    /**
     * DJL's pagination of list answers: {@code limit} (default and most 100) items from
     * {@code next_page_token} (default 0); nextPageToken is set while items are left. A parameter that
     * is not an integer is answered as DJL answers its NumberFormatException (409), and null returned.
     */
    record Page(int first, int last, String nextPageToken) {
        static Page of(HttpExchange ex, int size) throws IOException {
            List<String[]> query = query(ex);
            int limit;
            int token;
            try {
                limit = intParam(query, "limit", 100);
                token = intParam(query, "next_page_token", 0);
            } catch (NumberFormatException e) {
                sendError(ex, 409, "NumberFormatException", e.getMessage());
                return null;
            }
            if (limit > 100 || limit < 0) {
                limit = 100;
            }
            token = Math.max(0, token);
            int last = (int) Math.min((long) token + limit, size);
            return new Page(token, last, last < size ? String.valueOf(last) : null);
        }
    }

    /** Query parameters in order, decoded as Netty's QueryStringDecoder does ({@code +} is a space). */
    static List<String[]> query(HttpExchange ex) {
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
    static Map<String, String> singleParams(List<String[]> query) {
        Map<String, String> single = new LinkedHashMap<>();
        Map<String, Integer> counts = new LinkedHashMap<>();
        for (String[] kv : query) {
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

    /** The first value of a parameter, as DJL's getParameter: an empty one counts as absent. */
    static String param(List<String[]> query, String key) {
        for (String[] kv : query) {
            if (kv[0].equals(key)) {
                return kv[1].isEmpty() ? null : kv[1];
            }
        }
        return null;
    }

    /** A required parameter, or null after answering DJL's 400 "The parameter KEY is required". */
    static String requiredParam(HttpExchange ex, List<String[]> query, String key) throws IOException {
        String value = param(query, key);
        if (value == null) {
            sendError(ex, 400, "BadRequestException", "The parameter " + key + " is required");
        }
        return value;
    }

    /** An integer parameter; throws NumberFormatException as DJL's getIntParameter does. */
    static int intParam(List<String[]> query, String key, int def) {
        String value = param(query, key);
        return value == null ? def : Integer.parseInt(value);
    }

    static boolean requireMethod(HttpExchange ex, String method, String expected) throws IOException {
        if (expected.equals(method)) {
            return true;
        }
        ex.getResponseHeaders().set("Allow", expected);
        methodNotAllowed(ex);
        return false;
    }

    static void methodNotAllowed(HttpExchange ex) throws IOException {
        sendError(ex, 405, "MethodNotAllowedException", "Requested method is not allowed, please refer to API document.");
    }

    static void notFound(HttpExchange ex) throws IOException {
        sendError(ex, 404, "ResourceNotFoundException", "Requested resource is not found, please refer to API document.");
    }

    /** An inference request for a model this server does not have (DJL's ModelNotFoundException). */
    static void modelNotFound(HttpExchange ex, String name) throws IOException {
        sendError(ex, 404, "ModelNotFoundException", "Model or workflow not found: " + name);
    }

    /** A status the HTTP layer can send: a handler's code outside 100-599 is answered as 500. */
    static int validCode(int code) {
        return code >= 100 && code <= 599 ? code : 500;
    }

    /** EngineException (worker died, timed out, restarting) is 503, TranslateException 400 as in DJL, else 500. */
    static void sendException(HttpExchange ex, Throwable t, int predictTimeoutSeconds) throws IOException {
        int code = t instanceof EngineException ? 503 : t instanceof TranslateException ? 400 : 500;
        logger.warn("Request failed with {}: {}", code, t.toString());
        String type = t.getClass().getSimpleName();
        String message = String.valueOf(t.getMessage());
        if (hasCause(t, TimeoutException.class)) {
            type = "PredictTimeoutException";
            message = "The request ran longer than predict_timeout (" + predictTimeoutSeconds
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

    static void sendError(HttpExchange ex, int code, String type, String message) throws IOException {
        sendJson(ex, code, obj("code", code, "type", type, "message", message));
    }

    /** A JSON object that keeps its keys in the order given. */
    static Map<String, Object> obj(Object... keyValues) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < keyValues.length; i += 2) {
            m.put((String) keyValues[i], keyValues[i + 1]);
        }
        return m;
    }

    /** JSON as DJL's NettyUtils sends it: its pretty-printing Gson (dates, escaping), then a newline. */
    static void sendJson(HttpExchange ex, int code, Object body) throws IOException {
        byte[] bytes = (JsonUtils.GSON_PRETTY.toJson(body) + "\n").getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "application/json");
        ex.sendResponseHeaders(code, bytes.length);
        ex.getResponseBody().write(bytes);
    }
}
