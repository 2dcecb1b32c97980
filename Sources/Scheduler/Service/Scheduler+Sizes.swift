import Foundation
import HangarNATS
import HangarShared
import SwiftProtobuf

extension Scheduler {
    /// Bytes the scheduler keeps below `max_payload` for the headers it adds when it forwards a
    /// request into the intake stream (job id, trace, time, message id: about 160 bytes today).
    static let forwardingHeadroom = 4096

    /// Requests are decoded without the fields this version does not know: what is stored with a
    /// job is what was validated (a padded request must not leave its padding in `jobs.request`).
    static let decoding: BinaryDecodingOptions = {
        var options = BinaryDecodingOptions()
        options.discardUnknownFields = true
        return options
    }()

    /// The largest message the server takes (`max_payload` from its INFO; Hangar's default while
    /// disconnected).
    nonisolated var maxReplyBytes: Int {
        let announced = nats.maxPayload
        return announced > 0 ? announced : LocalNATSServer.maxPayload
    }

    /// The largest request (or batch of requests) the scheduler can forward to the intake stream.
    nonisolated var maxRequestBytes: Int { maxReplyBytes - Self.forwardingHeadroom }

    /// `LIMIT_EXCEEDED` for a request of `size` bytes, naming the real maximum.
    nonisolated func tooLarge(_ field: String, _ size: Int) -> Rejection {
        Rejection(
            .limitExceeded,
            field,
            "the request is \(size) bytes; the most the scheduler accepts is \(maxRequestBytes) bytes "
                + "(the server's max_payload of \(maxReplyBytes) less \(Self.forwardingHeadroom) for the "
                + "headers it adds when it forwards the request)"
        )
    }
}
