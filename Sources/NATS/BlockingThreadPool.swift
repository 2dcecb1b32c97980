import Foundation

/// A fixed number of threads that run blocking work (libnats calls that wait on the network) taken
/// from one FIFO queue, so that neither Swift's cooperative pool nor an unbounded number of
/// dispatch threads is held by them. Modelled on swift-nio's `NIOThreadPool`, without its states.
///
/// Work runs in the order it was submitted; at most `size` items run at once and the rest wait.
final class BlockingThreadPool: @unchecked Sendable {
    // @unchecked Sendable: `work` and `stopping` are read and written only while `condition` is
    // locked; `size` is immutable and the threads own nothing else.
    private let condition = NSCondition()
    private var work: [@Sendable () -> Void] = []
    /// Index of the next item to run in `work` (the front is compacted once it grows).
    private var head = 0
    private var stopping = false
    /// The number of threads.
    let size: Int

    /// Starts `size` threads named `<name>.<n>`.
    init(size: Int, name: String) {
        precondition(size > 0, "a thread pool needs at least one thread")
        self.size = size
        for index in 0..<size {
            let thread = Thread { [self] in loop() }
            thread.name = "\(name).\(index)"
            thread.start()
        }
    }

    /// Queues `item`; one of the threads runs it when it is free.
    func submit(_ item: @escaping @Sendable () -> Void) {
        condition.lock()
        precondition(!stopping, "work submitted to a thread pool that was shut down")
        work.append(item)
        condition.signal()
        condition.unlock()
    }

    /// Runs `body` on one of the threads and resumes the caller with its result.
    func run<T: Sendable, E: Error>(_ body: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let result: Result<T, E> = await withCheckedContinuation { continuation in
            submit {
                do throws(E) {
                    continuation.resume(returning: .success(try body()))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }

    /// Lets the threads end once the queue is empty. Submitting afterwards is a programming error.
    func shutdown() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while head == work.count && !stopping { condition.wait() }
            if head == work.count {
                condition.unlock()
                return
            }
            let item = work[head]
            head += 1
            if head == work.count {
                work.removeAll(keepingCapacity: true)
                head = 0
            } else if head >= 1024 {
                work.removeFirst(head)
                head = 0
            }
            condition.unlock()
            item()
        }
    }
}
