import CNATS
import Foundation

extension JetStreamPullConsumer {
    /// Waits at most `wait` for the first message, then takes whatever else the stream has ready,
    /// up to `max` in all, without waiting for more. Returns an empty array when nothing arrived.
    ///
    /// Unlike ``fetch(batch:timeout:)`` (libnats' simple fetch waits until the whole batch is there
    /// or the time is up), a lone message is handed over at once, and under load one call still
    /// returns a large batch. One pull request: "no wait" with an expiry, which nats-server (2.9+)
    /// answers with the messages it has as soon as it has any, then ends with a 408 status.
    ///
    /// `maxBytes` (0: no limit) bounds the payload bytes one pull may bring, so that a stream of
    /// large messages cannot pile up on the connection (nats-server cuts a slow consumer off). It
    /// must exceed the largest message, or that message is never delivered.
    public func fetchAvailable(
        max: Int,
        maxBytes: Int = 0,
        wait: Duration
    ) async throws(NATSError) -> [JetStreamMessage] {
        try await pull(batch: max, maxBytes: maxBytes, noWait: true, expires: wait)
    }

    private func pull(
        batch: Int,
        maxBytes: Int,
        noWait: Bool,
        expires: Duration
    ) async throws(NATSError) -> [JetStreamMessage] {
        let sub = UncheckedPointer(subscription)
        // A pull blocks for up to `expires`: on a thread of its own, never one of libdispatch's
        // (Swift's executor on Linux shares them; two long pulls on a 2-core machine would stall
        // every task, heartbeats included).
        let pointers = try await runOnOwnThread { () throws(NATSError) -> [UncheckedPointer] in
            var request = jsFetchRequest()
            try NATSError.check(jsFetchRequest_Init(&request), "jsFetchRequest_Init")
            request.Batch = Int32(batch)
            request.MaxBytes = Int64(maxBytes)
            request.NoWait = noWait
            request.Expires = expires.nanoseconds
            var list = natsMsgList()
            let status = natsSubscription_FetchRequest(&list, sub.pointer, &request)
            // Nothing there (no-wait: 404) or nothing in time (408 / timeout): an empty batch.
            if status == NATS_TIMEOUT || status == NATS_NOT_FOUND { return [] }
            try NATSError.check(status, "fetch")
            var result: [UncheckedPointer] = []
            for index in 0..<Int(list.Count) {
                if let msg = list.Msgs[index] {
                    result.append(UncheckedPointer(msg))
                    list.Msgs[index] = nil  // ownership moves to JetStreamMessage
                }
            }
            natsMsgList_Destroy(&list)
            return result
        }
        return pointers.map { JetStreamMessage(owning: $0.pointer, consumer: self) }
    }
}

/// Runs a blocking libnats call on a new thread and resumes the caller with its result.
private func runOnOwnThread<T: Sendable>(
    _ body: @escaping @Sendable () throws(NATSError) -> T
) async throws(NATSError) -> T {
    let result: Result<T, NATSError> = await withCheckedContinuation { continuation in
        let thread = Thread {
            do throws(NATSError) {
                continuation.resume(returning: .success(try body()))
            } catch {
                continuation.resume(returning: .failure(error))
            }
        }
        thread.name = "hangar.jetstream.pull"
        thread.start()
    }
    return try result.get()
}
