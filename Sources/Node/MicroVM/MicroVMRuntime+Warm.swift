import Foundation
import HangarShared

extension MicroVMRuntime: WarmableRuntime {
    /// Restores failing in a row before the runtime stops trying snapshots.
    static let restoreFailureLimit = 3

    /// A VM of the `host` template whose agent waits for its job. With
    /// ``MicroVMConfiguration/snapshotRefill`` (the default) it is restored from a snapshot taken
    /// once from a booted VM (the first refill pays that boot); if the snapshot cannot be taken or
    /// the restore fails, the VM is booted instead and a warning is logged. The profile's limits are
    /// not fixed in a VM (the agent applies every limit from the JOB frame), so every profile fits.
    public func prepareWarm(template: String, profile: WarmProfile) async throws(WarmError) -> any WarmSandbox {
        guard template == TemplateName.host else {
            throw WarmError("template \"\(template)\" is not available in the microvm runtime (only host)")
        }
        let host: MicroVMHost
        switch await self.host() {
        case .failure(let error): throw WarmError("the microvm runtime is unavailable: \(error.description)")
        case .success(let prepared): host = prepared
        }
        let vcpus = min(max(1, configuration.warmVCPUs), max(1, ProcessInfo.processInfo.activeProcessorCount))
        let jobMemory = configuration.warmJobMemoryBytes
        if configuration.snapshotRefill,
            let snapshot = await snapshot(host: host, memoryBytes: jobMemory + Self.overhead(host), vcpus: vcpus)
        {
            do throws(MicroVMError) {
                let sandbox = try await MicroVMWarmSandbox.start(
                    host: host,
                    jobMemoryBytes: jobMemory,
                    vcpus: vcpus,
                    snapshot: snapshot
                )
                snapshots.withLock { $0.failedRestores = 0 }
                return sandbox
            } catch {
                let disabled = snapshots.withLock { state -> Bool in
                    state.failedRestores += 1
                    guard state.failedRestores >= Self.restoreFailureLimit else { return false }
                    state.disabled = "\(state.failedRestores) restores failed in a row"
                    return true
                }
                logger.warning(
                    "restoring a warm microVM from its snapshot failed; booting it instead",
                    metadata: ["error": "\(error.description)", "snapshots": "\(disabled ? "off from now on" : "on")"]
                )
            }
        }
        do throws(MicroVMError) {
            return try await MicroVMWarmSandbox.start(host: host, jobMemoryBytes: jobMemory, vcpus: vcpus)
        } catch {
            throw WarmError(error.description)
        }
    }

    /// Why a VM restored from `snapshot` did not run `/bin/true` to SUCCEEDED, or nil if it did.
    static func checkRestore(_ snapshot: MicroVMSnapshot, host: MicroVMHost) async -> String? {
        let jobMemory = snapshot.memoryBytes - Self.overhead(host)
        let sandbox: MicroVMWarmSandbox
        do throws(MicroVMError) {
            sandbox = try await MicroVMWarmSandbox.start(
                host: host,
                jobMemoryBytes: jobMemory,
                vcpus: snapshot.vcpus,
                snapshot: snapshot
            )
        } catch {
            return error.description
        }
        var spec = Hangar_V1_JobSpec()
        spec.runtime = "microvm"
        spec.argv = ["/bin/true"]
        spec.limits.timeoutMs = 10_000
        spec.limits.memoryBytes = min(64 << 20, jobMemory)
        let outcome = await sandbox.run(spec, jobID: "snapshot-check")
        return outcome.status == .succeeded ? nil : "\(outcome.status): \(outcome.message)"
    }

    /// The snapshot of a VM of this shape, taking it on first use (and checking that a VM restored
    /// from it runs a job); nil (logged once) when it cannot be taken or snapshots were turned off.
    func snapshot(host: MicroVMHost, memoryBytes: UInt64, vcpus: Int) async -> MicroVMSnapshot? {
        let task = snapshots.withLock { state -> Task<Result<MicroVMSnapshot, MicroVMError>, Never>? in
            guard state.disabled == nil else { return nil }
            if let task = state.task { return task }
            let created = Task { () -> Result<MicroVMSnapshot, MicroVMError> in
                // A snapshot is used only once a VM restored from it has run a job: in one CI run
                // every VM restored from a snapshot answered the handshake and then never reported
                // its job. One that fails the check is taken again, once; then VMs are booted.
                var failedCheck: String?
                for _ in 0..<2 {
                    let snapshot: MicroVMSnapshot
                    do throws(MicroVMError) {
                        snapshot = try await MicroVMSnapshot.take(host: host, memoryBytes: memoryBytes, vcpus: vcpus)
                    } catch {
                        return .failure(error)
                    }
                    guard let problem = await Self.checkRestore(snapshot, host: host) else { return .success(snapshot) }
                    self.logger.warning(
                        "a VM restored from the new microVM snapshot failed its check job; taking it again",
                        metadata: ["problem": "\(problem)"]
                    )
                    failedCheck = problem
                }
                return .failure(
                    MicroVMError("VMs restored from two snapshots failed the check job: \(failedCheck ?? "")")
                )
            }
            state.task = created
            return created
        }
        guard let task else { return nil }
        switch await task.value {
        case .success(let snapshot):
            guard snapshot.memoryBytes == memoryBytes, snapshot.vcpus == vcpus else { return nil }
            let first = snapshots.withLock { state in
                defer { state.announced = true }
                return !state.announced
            }
            if first {
                logger.info(
                    "microVM snapshot taken; warm VMs are restored from it",
                    metadata: [
                        "bytes": "\(snapshot.bytes)", "boot_ms": "\(JobLimits.milliseconds(snapshot.bootTime))",
                        "save_ms": "\(JobLimits.milliseconds(snapshot.saveTime))",
                    ]
                )
            }
            return snapshot
        case .failure(let error):
            let first = snapshots.withLock { state in
                defer { state.disabled = error.description }
                return state.disabled == nil
            }
            if first {
                logger.warning(
                    "cannot take a microVM snapshot; warm VMs are booted instead",
                    metadata: ["error": "\(error.description)"]
                )
            }
            return nil
        }
    }
}
