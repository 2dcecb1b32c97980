import Dispatch
import Foundation

/// Waits until SIGINT or SIGTERM arrives (returns the signal) or the task is cancelled (returns 0).
/// After the first signal the default action is restored, so a second Ctrl-C ends the process.
func waitForShutdownSignal() async -> Int32 {
    let box = SignalBox()
    return await withTaskCancellationHandler {
        await withCheckedContinuation { continuation in
            box.start(continuation)
        }
    } onCancel: {
        box.finish(0)
    }
}

/// Holds the dispatch sources that turn signals into a continuation.
private final class SignalBox: @unchecked Sendable {
    // @unchecked Sendable: every field is touched only on `queue`.
    private var sources: [DispatchSourceSignal] = []
    private var continuation: CheckedContinuation<Int32, Never>?
    private var finished = false
    private let queue = DispatchQueue(label: "hangar.signals")

    func start(_ continuation: CheckedContinuation<Int32, Never>) {
        queue.sync {
            guard !finished else {
                continuation.resume(returning: 0)
                return
            }
            self.continuation = continuation
            for sig in [SIGINT, SIGTERM] {
                signal(sig, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
                source.setEventHandler { [self] in finishLocked(sig) }
                source.resume()
                sources.append(source)
            }
        }
    }

    func finish(_ value: Int32) {
        queue.async { self.finishLocked(value) }
    }

    private func finishLocked(_ value: Int32) {
        guard !finished else { return }
        finished = true
        for source in sources { source.cancel() }
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
        continuation?.resume(returning: value)
        continuation = nil
    }
}
