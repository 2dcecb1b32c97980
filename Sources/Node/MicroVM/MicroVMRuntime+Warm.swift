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

    /// The snapshot of a VM of this shape, taking it on first use; nil (logged once) when it cannot
    /// be taken or snapshots were turned off.
    func snapshot(host: MicroVMHost, memoryBytes: UInt64, vcpus: Int) async -> MicroVMSnapshot? {
        let task = snapshots.withLock { state -> Task<Result<MicroVMSnapshot, MicroVMError>, Never>? in
            guard state.disabled == nil else { return nil }
            if let task = state.task { return task }
            let created = Task { () -> Result<MicroVMSnapshot, MicroVMError> in
                do throws(MicroVMError) {
                    return .success(try await MicroVMSnapshot.take(host: host, memoryBytes: memoryBytes, vcpus: vcpus))
                } catch {
                    return .failure(error)
                }
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
