package ai.loraship.host;

import ai.djl.metric.Dimension;
import ai.djl.metric.Metric;
import ai.djl.metric.MetricType;
import ai.djl.metric.Unit;
import ai.djl.util.Utils;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.regex.Pattern;

/**
 * The host's {@code /server/metrics}: DJL {@link Metric}s (the Python worker's {@code [METRICS]} lines, which
 * DJL's PyProcess parses, and the host's own per-request figures) kept as Prometheus counters, gauges and
 * histograms and written in text format 0.0.4, as real DJL Serving 0.36.0 exposes them with
 * {@code SERVING_PROMETHEUS=true} (its log4j2 Prometheus appender over the Prometheus Java client 1.3.6).
 *
 * <p>What DJL makes of a Metric, reproduced here (measured, /work/notes/djl_metrics.md): the type is the
 * line's explicit {@code |c|g|h}, else a counter for unit Count and a gauge for any other unit; only the
 * first dimension becomes a label, and a metric's label name is the one it was first seen with; a counter
 * is named {@code <name>_total} and adds increments (a negative one is refused); histograms have the
 * client's default buckets; HELP reads {@code : prometheus <type> metric, unit: <Unit>}; a name already
 * used with another type, or invalid in Prometheus, is dropped. Families are sorted by name and series by
 * label value, numbers written as Java writes doubles.
 */
final class Prometheus {

    static final String CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";
    /** The Prometheus Java client's default buckets (seconds), as in DJL's scrape. */
    private static final double[] BUCKETS = {.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10};
    private static final Pattern NAME = Pattern.compile("[a-zA-Z_:][a-zA-Z0-9_:]*");
    private static final Pattern LABEL = Pattern.compile("[a-zA-Z_][a-zA-Z0-9_]*");
    private static final Logger logger = LoggerFactory.getLogger(Prometheus.class);
    private static final Prometheus INSTANCE = new Prometheus(
            Boolean.parseBoolean(Utils.getEnvOrSystemProperty("SERVING_PROMETHEUS")));

    private enum Kind {
        COUNTER("counter"), GAUGE("gauge"), HISTOGRAM("histogram");

        final String word;

        Kind(String word) {
            this.word = word;
        }
    }

    /** One series: a counter's total, a gauge's value, or a histogram's cumulative buckets, count and sum. */
    private static final class Series {
        double value;
        final long[] buckets = new long[BUCKETS.length];
        long count;
    }

    private record Family(String name, Kind kind, String unit, String labelName, Map<String, Series> series) {}

    private final boolean enabled;
    private final Map<String, Family> families = new TreeMap<>();
    private final AtomicBoolean warned = new AtomicBoolean();

    Prometheus(boolean enabled) {
        this.enabled = enabled;
    }

    /** The host's registry; enabled by {@code SERVING_PROMETHEUS=true} (environment or system property), as in DJL. */
    static Prometheus get() {
        return INSTANCE;
    }

    boolean enabled() {
        return enabled;
    }

    /** Adds one metric; one DJL would drop (see the class comment) is dropped. Never throws. */
    void record(Metric metric) {
        if (!enabled) {
            return;
        }
        try {
            String reason = add(metric);
            if (reason != null && warned.compareAndSet(false, true)) {
                logger.warn("Metric dropped, as DJL Serving drops it ({}): {} (later ones are logged at debug)",
                        reason, metric);
            } else if (reason != null) {
                logger.debug("Metric dropped ({}): {}", reason, metric);
            }
        } catch (RuntimeException e) {
            logger.debug("Metric dropped: {}", metric, e);
        }
    }

    /** The host's per-request figures, named and labelled as DJL Serving's. */
    void histogram(String name, long micros, String modelName) {
        record(new Metric(name, MetricType.HISTOGRAM, micros, Unit.MICROSECONDS, new Dimension("Model", modelName)));
    }

    /** DJL's Response_2XX / _4XX / _5XX counters, one per inference response (label Host, as DJL's). */
    void response(int code) {
        if (code > 0) {
            record(new Metric(code >= 500 ? "Response_5XX" : code >= 400 ? "Response_4XX" : "Response_2XX", 1));
        }
    }

    private synchronized String add(Metric metric) {
        if (metric == null) {
            return "a [METRICS] line that ai.djl.metric.Metric.parse could not read";
        }
        String name = metric.getMetricName();
        Dimension[] dims = metric.getDimensions();
        if (dims == null || dims.length == 0 || dims[0] == null || dims[0].getName() == null
                || dims[0].getValue() == null) {
            return "no first dimension";
        }
        if (name == null || !NAME.matcher(name).matches() || name.endsWith("_total") || name.endsWith("_bucket")
                || name.endsWith("_created") || name.endsWith("_info")) {
            return "not a valid Prometheus metric name";
        }
        String labelName = dims[0].getName();
        if (!LABEL.matcher(labelName).matches() || labelName.startsWith("__")) {
            return "not a valid Prometheus label name";
        }
        Unit unit = metric.getUnit();
        MetricType type = metric.getMetricType();
        Kind kind = type == MetricType.COUNTER ? Kind.COUNTER
                : type == MetricType.GAUGE ? Kind.GAUGE
                : type == MetricType.HISTOGRAM ? Kind.HISTOGRAM
                : unit == Unit.COUNT ? Kind.COUNTER : Kind.GAUGE;
        double value = metric.getValue();
        Family family = families.get(name);
        if (family == null) {
            family = new Family(name, kind, unit.getValue(), labelName, new TreeMap<>());
            families.put(name, family);
        } else if (family.kind != kind) {
            return "the name is already a " + family.kind.word;
        }
        // The label name stays the first one seen; the value is this metric's (DJL relabels silently).
        Series s = family.series.computeIfAbsent(dims[0].getValue(), k -> new Series());
        switch (kind) {
            case COUNTER -> {
                if (!(value >= 0)) {
                    return "a negative counter increment";
                }
                s.value += value;
            }
            case GAUGE -> s.value = value;
            default -> {
                for (int i = 0; i < BUCKETS.length; i++) {
                    if (value <= BUCKETS[i]) {
                        s.buckets[i]++;
                    }
                }
                s.count++;
                s.value += value;
            }
        }
        return null;
    }

    /** The text exposition; {@code names} (DJL's {@code ?name[]=}, names without {@code _total}) filters when not empty. */
    synchronized String scrape(Set<String> names) {
        StringBuilder sb = new StringBuilder();
        for (Family f : families.values()) {
            if (!names.isEmpty() && !names.contains(f.name)) {
                continue;
            }
            String exposed = f.kind == Kind.COUNTER ? f.name + "_total" : f.name;
            sb.append("# HELP ").append(exposed).append(' ')
                    .append(escapeHelp(": prometheus " + f.kind.word + " metric, unit: " + f.unit)).append('\n');
            sb.append("# TYPE ").append(exposed).append(' ').append(f.kind.word).append('\n');
            for (Map.Entry<String, Series> e : f.series.entrySet()) {
                String label = f.labelName + "=\"" + escapeLabel(e.getKey()) + "\"";
                Series s = e.getValue();
                if (f.kind != Kind.HISTOGRAM) {
                    sb.append(exposed).append('{').append(label).append("} ").append(number(s.value)).append('\n');
                    continue;
                }
                for (int i = 0; i < BUCKETS.length; i++) {
                    sb.append(f.name).append("_bucket{").append(label).append(",le=\"").append(number(BUCKETS[i]))
                            .append("\"} ").append(s.buckets[i]).append('\n');
                }
                sb.append(f.name).append("_bucket{").append(label).append(",le=\"+Inf\"} ").append(s.count).append('\n');
                sb.append(f.name).append("_count{").append(label).append("} ").append(s.count).append('\n');
                sb.append(f.name).append("_sum{").append(label).append("} ").append(number(s.value)).append('\n');
            }
        }
        return sb.toString();
    }

    private static String number(double d) {
        if (d == Double.POSITIVE_INFINITY) {
            return "+Inf";
        }
        return d == Double.NEGATIVE_INFINITY ? "-Inf" : Double.toString(d);
    }

    private static String escapeHelp(String s) {
        return s.replace("\\", "\\\\").replace("\n", "\\n");
    }

    private static String escapeLabel(String s) {
        return s.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n");
    }
}
