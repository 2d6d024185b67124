package ai.loraship.host;

import ai.djl.metric.Metric;

import org.slf4j.ILoggerFactory;
import org.slf4j.IMarkerFactory;
import org.slf4j.Logger;
import org.slf4j.Marker;
import org.slf4j.event.Level;
import org.slf4j.helpers.LegacyAbstractLogger;
import org.slf4j.simple.SimpleServiceProvider;
import org.slf4j.spi.MDCAdapter;
import org.slf4j.spi.SLF4JServiceProvider;

import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/**
 * The host's SLF4J backend: slf4j-simple for every logger except DJL's {@code model_metric}.
 *
 * <p>DJL's PyProcess hands each {@code [METRICS]} line a Python worker writes to that logger as a parsed
 * {@link Metric} (so do its AsyncRequestManager and RollingBatch for their own metrics). Real DJL Serving
 * routes the logger to its metrics file and, through log4j2, to its Prometheus appender. Here the Metric
 * goes to {@link Prometheus}; the console shows it only at debug level
 * ({@code -Dorg.slf4j.simpleLogger.log.model_metric=debug}), as DJL keeps metrics out of its server log.
 * {@link DjlHost} selects this provider with SLF4J's {@code slf4j.provider} property.
 */
public final class MetricLogging implements SLF4JServiceProvider {

    static final String MODEL_METRIC = "model_metric";

    private final SimpleServiceProvider simple = new SimpleServiceProvider();
    private ILoggerFactory factory;

    @Override
    public ILoggerFactory getLoggerFactory() {
        return factory;
    }

    @Override
    public IMarkerFactory getMarkerFactory() {
        return simple.getMarkerFactory();
    }

    @Override
    public MDCAdapter getMDCAdapter() {
        return simple.getMDCAdapter();
    }

    @Override
    public String getRequestedApiVersion() {
        return simple.getRequestedApiVersion();
    }

    @Override
    public void initialize() {
        simple.initialize();
        ILoggerFactory console = simple.getLoggerFactory();
        Map<String, Logger> metricLoggers = new ConcurrentHashMap<>();
        factory = name -> MODEL_METRIC.equals(name)
                ? metricLoggers.computeIfAbsent(name, n -> new ToPrometheus(n, console.getLogger(n)))
                : console.getLogger(name);
    }

    /** Sends every Metric argument to the registry, whatever the level it is logged at. */
    private static final class ToPrometheus extends LegacyAbstractLogger {

        private static final long serialVersionUID = 1L;
        private final transient Logger console;

        ToPrometheus(String name, Logger console) {
            this.name = name;
            this.console = console;
        }

        @Override
        public boolean isTraceEnabled() {
            return true;
        }

        @Override
        public boolean isDebugEnabled() {
            return true;
        }

        @Override
        public boolean isInfoEnabled() {
            return true;
        }

        @Override
        public boolean isWarnEnabled() {
            return true;
        }

        @Override
        public boolean isErrorEnabled() {
            return true;
        }

        @Override
        protected String getFullyQualifiedCallerName() {
            return null;
        }

        @Override
        protected void handleNormalizedLoggingCall(
                Level level, Marker marker, String pattern, Object[] args, Throwable t) {
            // PyProcess logs Metric.parse's result: null for a line it could not read, which DJL drops too.
            boolean metric = args != null && args.length == 1 && (args[0] instanceof Metric || args[0] == null);
            if (metric) {
                Prometheus.get().record((Metric) args[0]);
            }
            if (console.isDebugEnabled()) {
                console.debug(pattern, args);
            } else if (!metric && level.toInt() >= Level.INFO.toInt()) {
                console.info(pattern, args); // not a metric: shown as before
            }
        }
    }
}
