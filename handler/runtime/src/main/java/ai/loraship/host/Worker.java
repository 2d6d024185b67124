package ai.loraship.host;

import ai.djl.Model;
import ai.djl.engine.EngineException;
import ai.djl.inference.Predictor;
import ai.djl.inference.streaming.ChunkedBytesSupplier;
import ai.djl.modality.Input;
import ai.djl.modality.Output;
import ai.djl.translate.Translator;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import java.util.function.Supplier;

/**
 * One Python worker process and the only thread that talks to it.
 *
 * <p>A PyPredictor is not thread-safe, so everything sent to this worker (request batches from the
 * shared queue, adapter operations from its own control queue) goes through {@link #run}. Each
 * worker restarts its own Python process; {@link Pool} starts and stops them together.
 */
final class Worker implements Runnable {

    /** A request waiting for its Output. */
    static final class Job {
        final Input input;
        final CompletableFuture<Output> result = new CompletableFuture<>();
        /** When it was queued: DJL's QueueTime and RequestLatency count from here. */
        final long created = System.nanoTime();

        Job(Input input) {
            this.input = input;
        }
    }

    /**
     * The host's workers and the request queue they share. Adapter operations go to every worker, so
     * each Python process holds the same adapters.
     */
    static final class Pool {

        // The lines logged here were DjlHost's: they keep its logger name, so the server log reads as before.
        private static final Logger logger = LoggerFactory.getLogger(DjlHost.class);

        private final BlockingQueue<Job> jobs;
        private final List<Worker> workers = new CopyOnWriteArrayList<>();

        Pool(int queueSize) {
            this.jobs = new ArrayBlockingQueue<>(queueSize);
        }

        /** Starts every worker in parallel and returns once all have loaded the model. */
        void start(
                Model model,
                Translator<Input, Output> translator,
                HostConfig config,
                Supplier<List<Adapters.Adapter>> adapterReplay) throws Exception {
            List<CompletableFuture<Void>> starts = new ArrayList<>();
            for (int i = 0; i < config.workers; i++) {
                Worker worker = new Worker(i, model, translator, jobs, config, adapterReplay,
                        () -> workers.stream().anyMatch(Worker::isHealthy));
                workers.add(worker);
                starts.add(CompletableFuture.runAsync(worker::start));
            }
            try {
                CompletableFuture.allOf(starts.toArray(CompletableFuture<?>[]::new)).join();
            } catch (RuntimeException e) {
                throw e.getCause() instanceof Exception cause ? cause : e;
            }
        }

        List<Worker> workers() {
            return workers;
        }

        /** Queues a request for the next free worker; false when the queue is full. */
        boolean offer(Job job) {
            return jobs.offer(job);
        }

        int queued() {
            return jobs.size();
        }

        boolean healthy() {
            return !workers.isEmpty() && workers.stream().allMatch(Worker::isHealthy);
        }

        /**
         * Sends an input (a fresh one each) to every worker; returns the first Output with code >= 300,
         * or, when all accepted it, the first worker's.
         */
        Output onAll(Supplier<Input> input) throws ExecutionException, InterruptedException {
            List<CompletableFuture<Output>> results = new ArrayList<>();
            for (Worker worker : workers) {
                results.add(worker.submitControl(input.get()));
            }
            Output first = null;
            Output failure = null;
            for (CompletableFuture<Output> result : results) {
                Output out = settled(result.get());
                if (first == null) {
                    first = out;
                }
                if (failure == null && out.getCode() >= 300) {
                    failure = out;
                }
            }
            return failure != null ? failure : first;
        }

        /** Stops every worker and its Python process; called from the shutdown hook. */
        void close() {
            workers.forEach(Worker::requestStop);
            for (Worker worker : workers) {
                try {
                    worker.close();
                } catch (RuntimeException e) {
                    logger.warn("Failed to stop a worker", e);
                }
            }
        }
    }

    private static final Logger logger = LoggerFactory.getLogger(Worker.class);
    /** Bounds how long an adapter operation waits for an idle worker. */
    private static final long POLL_MILLIS = 20;
    private static final long RECOVERY_BACKOFF_MILLIS = 5000;
    /** How long an adapter operation may take in the handler (loading a large adapter included). */
    private static final long SETTLE_SECONDS = 600;

    private final int id;
    private final Model model;
    private final Translator<Input, Output> translator;
    private final BlockingQueue<Job> jobs;
    private final BlockingQueue<Job> control = new LinkedBlockingQueue<>();
    private final int batchSize;
    private final String modelName;
    private final long maxBatchDelayMillis;
    private final Supplier<List<Adapters.Adapter>> adapterReplay;
    private final BooleanSupplier anyWorkerHealthy;
    private final Thread thread;
    private volatile Predictor<Input, Output> predictor;
    private volatile boolean running = true;
    /** The Python process whose adapters match the host's record (replayed after every restart). */
    private volatile String syncedPid;
    private long nextRecovery;
    /** When this worker first started (a restart of its Python process keeps it, as DJL's WorkerThread does). */
    private volatile long startTime;

    Worker(
            int id,
            Model model,
            Translator<Input, Output> translator,
            BlockingQueue<Job> jobs,
            HostConfig config,
            Supplier<List<Adapters.Adapter>> adapterReplay,
            BooleanSupplier anyWorkerHealthy) {
        this.id = id;
        this.model = model;
        this.translator = translator;
        this.jobs = jobs;
        this.batchSize = config.batchSize;
        this.modelName = config.modelName;
        this.maxBatchDelayMillis = config.maxBatchDelayMillis;
        this.adapterReplay = adapterReplay;
        this.anyWorkerHealthy = anyWorkerHealthy;
        this.thread = new Thread(this, "worker-" + id);
    }

    /** Starts the Python process (blocking until its model is loaded), then the worker thread. */
    void start() {
        startTime = System.currentTimeMillis();
        predictor = model.newPredictor(translator);
        PyProbe.useStreamSafeDecoder(predictor);
        syncedPid = PyProbe.pid(predictor);
        thread.start();
    }

    int id() {
        return id;
    }

    long startTime() {
        return startTime;
    }

    /** Runs an adapter operation on this worker's own thread. */
    CompletableFuture<Output> submitControl(Input input) {
        Job job = new Job(input);
        control.add(job);
        return job.result;
    }

    /** Ready, and (after a restart) its adapters registered again: /ping says 200 only then. */
    boolean isHealthy() {
        Predictor<Input, Output> p = predictor;
        if (!running || !thread.isAlive() || p == null || !PyProbe.isReady(p)) {
            return false;
        }
        String pid = PyProbe.pid(p);
        return pid == null || pid.equals(syncedPid);
    }

    @Override
    public void run() {
        while (running) {
            try {
                // Checked while idle too, so /ping recovers without waiting for traffic. While the
                // process restarts, requests stay queued for a healthy worker (this one once it is back,
                // or another) and adapter operations wait: only a failed restart fails them.
                if (!ensureHealthy()) {
                    Thread.sleep(POLL_MILLIS);
                    continue;
                }
                for (Job c; (c = control.poll()) != null; ) {
                    execute(List.of(c));
                }
                Job first = jobs.poll(POLL_MILLIS, TimeUnit.MILLISECONDS);
                if (first != null) {
                    List<Job> batch = collectBatch(first);
                    timed(batch, "QueueTime");
                    if (execute(batch)) {
                        timed(batch, "RequestLatency"); // in async mode: until dispatched, as in DJL
                    }
                }
            } catch (InterruptedException e) {
                break;
            } catch (Throwable t) {
                // Never let the thread die: the jobs already failed inside execute().
                logger.error("Worker {} loop error", id, t);
            }
        }
        fail(new ArrayList<>(control), new EngineException("Server is shutting down"));
    }

    /** Takes jobs until the batch is full or max_batch_delay has passed since the first one. */
    private List<Job> collectBatch(Job first) throws InterruptedException {
        List<Job> batch = new ArrayList<>(batchSize);
        batch.add(first);
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(maxBatchDelayMillis);
        while (batch.size() < batchSize) {
            long left = deadline - System.nanoTime();
            Job next = left > 0 ? jobs.poll(left, TimeUnit.NANOSECONDS) : jobs.poll();
            if (next == null) {
                break;
            }
            batch.add(next);
        }
        return batch;
    }

    /** DJL's per-request histograms (microseconds since the job was queued), labelled with the model's name. */
    private void timed(List<Job> batch, String metric) {
        long now = System.nanoTime();
        for (Job job : batch) {
            Prometheus.get().histogram(metric, (now - job.created) / 1000, modelName);
        }
    }

    /**
     * One batchPredict call; PyPredictor builds the batch_NNN. encoding when there are several. False when
     * it failed (the jobs then failed with it).
     */
    private boolean execute(List<Job> batch) {
        List<Input> inputs = new ArrayList<>(batch.size());
        for (Job job : batch) {
            inputs.add(job.input);
        }
        try {
            List<Output> outputs = predictor.batchPredict(inputs);
            for (int i = 0; i < batch.size(); i++) {
                batch.get(i).result.complete(outputs.get(i));
            }
            return true;
        } catch (Throwable t) {
            logger.warn("Worker {}: batch of {} failed: {}", id, batch.size(), t.toString());
            fail(batch, t);
            return false;
        }
    }

    /**
     * Keeps the Python process usable. PyProcess restarts a worker that failed during a predict by
     * itself; one that died while idle, or whose restart failed, is never restarted, so it is
     * replaced here. A restarted process has lost its adapters: they are registered again.
     */
    private boolean ensureHealthy() {
        Predictor<Input, Output> p = predictor;
        if (PyProbe.isReady(p)) {
            String pid = PyProbe.pid(p);
            if (pid != null && !pid.equals(syncedPid)) {
                replayAdapters(pid);
            }
            return true;
        }
        if (PyProbe.restartPending(p) || System.currentTimeMillis() < nextRecovery) {
            return false;
        }
        logger.warn("Worker {}: Python process is down, starting a new one", id);
        try {
            p.close();
        } catch (RuntimeException e) {
            logger.warn("Worker {}: closing the old predictor failed", id, e);
        }
        try {
            predictor = model.newPredictor(translator);
            replayAdapters(PyProbe.pid(predictor));
            return true;
        } catch (RuntimeException e) {
            logger.error("Worker {}: restart failed, retrying in {} ms", id, RECOVERY_BACKOFF_MILLIS, e);
            nextRecovery = System.currentTimeMillis() + RECOVERY_BACKOFF_MILLIS;
            // Nothing waits for a restart that may never succeed: what is pending now fails.
            EngineException failure = new EngineException("Python worker " + id + " could not be restarted: " + e);
            List<Job> pending = new ArrayList<>();
            control.drainTo(pending);
            if (!anyWorkerHealthy.getAsBoolean()) {
                jobs.drainTo(pending);
            }
            fail(pending, failure);
            return false;
        }
    }

    /** Registers the host's adapters on a new Python process, then marks that process as in sync. */
    private void replayAdapters(String pid) {
        PyProbe.useStreamSafeDecoder(predictor); // a new process has a new connection
        List<Adapters.Adapter> adapters = adapterReplay.get();
        int ok = 0;
        for (Adapters.Adapter adapter : adapters) {
            try {
                Output out = settled(predictor.batchPredict(List.of(adapter.registerInput())).get(0));
                if (out.getCode() >= 300) {
                    // The new process may have it already from another source: the seed adapter it
                    // loads by itself (option.adapter_checkpoint), updated since. Bring it up to date.
                    out = settled(predictor.batchPredict(List.of(adapter.updateInput())).get(0));
                }
                if (out.getCode() >= 300) {
                    logger.error("Worker {}: re-registering adapter {} failed: {}",
                            id, adapter.name(), out.getMessage());
                } else {
                    ok++;
                }
            } catch (Exception e) {
                logger.error("Worker {}: re-registering adapter {} failed", id, adapter.name(), e);
            }
        }
        syncedPid = pid;
        logger.info("Worker {}: Python process {} is ready; {} of {} adapter(s) registered again",
                id, pid, ok, adapters.size());
    }

    /**
     * The Output once the handler has answered. In DJL's async mode batchPredict returns at once with an
     * empty stream, and the code arrives with its first message; real DJL Serving's adapter API reads the
     * code before that (so a registration that fails in the handler is still answered 200). The host waits.
     */
    static Output settled(Output out) {
        if (out.getData() instanceof ChunkedBytesSupplier chunks) {
            try {
                while (chunks.hasNext()) {
                    chunks.nextChunk(SETTLE_SECONDS, TimeUnit.SECONDS);
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return new Output(503, "Interrupted while waiting for the handler's answer");
            } catch (IllegalStateException e) {
                return new Output(504, "The handler did not answer within " + SETTLE_SECONDS + " s");
            }
        }
        return out;
    }

    private static void fail(List<Job> batch, Throwable t) {
        for (Job job : batch) {
            job.result.completeExceptionally(t);
        }
    }

    /** Asks the thread to stop after its current batch; not interrupted, which PyProcess would take as a failure. */
    void requestStop() {
        running = false;
    }

    /** Waits briefly for the thread, then stops the Python process; called from the shutdown hook. */
    void close() {
        running = false;
        try {
            thread.join(5000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        Predictor<Input, Output> p = predictor;
        if (p != null) {
            p.close();
        }
    }
}
