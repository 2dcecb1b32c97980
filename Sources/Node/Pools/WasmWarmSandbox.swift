import HangarShared

extension WasmRuntime: WarmableRuntime {
    /// A bubblewrap sandbox set up as a fresh wasm job's, in which the worker waits in its `--warm`
    /// mode (``WarmWaiter/wasmWorker(executable:preload:)``), holding the node's CPython for WASM
    /// parsed when the node has one: a `python` job then skips the sandbox's set-up, the worker's
    /// start and the parse of a 100 MB module. A job whose only file is its module gets it on the
    /// worker's control pipe (``WarmWaiter/carriedModule(_:)``). Only the `host` template: a job of
    /// a directory template starts cold.
    public func prepareWarm(template: String, profile: WarmProfile) async throws(WarmError) -> any WarmSandbox {
        guard template == TemplateName.host else {
            throw WarmError("warm wasm sandboxes are of the host template; jobs of template \(template) start cold")
        }
        guard case .success = worker else {
            if case .failure(let missing) = worker { throw WarmError(missing.description) }
            throw WarmError("no worker")
        }
        let waiter = WarmWaiter.wasmWorker(
            executable: Self.workerInSandbox,
            preload: python.map { _ in WasmPython.moduleInSandbox }
        )
        let sandbox = try await ProcessWarmSandbox.prepare(
            runtime: process,
            template: template,
            profile: profile,
            waiter: waiter,
            extraMemoryBytes: Self.engineMemoryBytes
        )
        return WasmWarmSandbox(runtime: self, sandbox: sandbox)
    }
}

/// A warm sandbox of ``WasmRuntime``: a ``ProcessWarmSandbox`` whose waiting program is the worker.
/// It runs the worker's process job for a wasm job (``WasmRuntime/workerSpec(for:limits:fuel:)``)
/// and reads the worker's endings back, as ``WasmRuntime/run(_:jobID:)`` does for a cold one.
struct WasmWarmSandbox: WarmSandbox {
    let runtime: WasmRuntime
    let sandbox: ProcessWarmSandbox

    /// The worker's job for `spec`, and its fuel; nil when `spec` is not a job the worker can run.
    private func workerJob(_ spec: Hangar_V1_JobSpec) -> (spec: Hangar_V1_JobSpec, fuel: UInt64?)? {
        let limits = JobLimits(spec.limits)
        let fuel = runtime.fuel(for: limits)
        guard let worker = try? runtime.workerSpec(for: spec, limits: limits, fuel: fuel) else { return nil }
        return (worker, fuel)
    }

    /// A job it runs as a fresh sandbox would: one the process sandbox takes as the worker's job
    /// (no files, no grants, …), whose memory limit holds what the waiting worker already uses
    /// (the parsed module): a lower one could not be written over the pool's.
    func accepts(_ spec: Hangar_V1_JobSpec) -> Bool {
        guard let job = workerJob(spec), sandbox.accepts(job.spec) else { return false }
        let used = sandbox.cgroup.currentMemoryBytes() ?? .max
        return JobLimits(job.spec.limits).memoryBytes > used
    }

    func run(_ spec: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome {
        guard let job = workerJob(spec) else {
            await sandbox.destroy()
            return .error("the warm wasm sandbox does not fit the job")
        }
        let limits = JobLimits(spec.limits)
        var outcome = await sandbox.run(job.spec, jobID: jobID)
        WasmRuntime.nameJobLimits(in: &outcome, limits: limits, worker: JobLimits(job.spec.limits), fuel: job.fuel)
        WasmRuntime.readEnding(into: &outcome, limits: limits, fuel: job.fuel)
        return outcome
    }

    func destroy() async {
        await sandbox.destroy()
    }
}
