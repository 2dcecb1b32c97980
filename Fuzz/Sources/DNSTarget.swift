import Foundation

/// The node's DNS reader (`Sources/Node/Runtime/DNSMessage.swift`, compiled into this harness): the
/// bytes a sandboxed job sends its resolver, and what an upstream answers. Any input must parse or
/// be refused without a crash; a query that parses gives a reply that parses back as an answer to
/// the same question with the code given, and ids can be swapped without changing anything else.
let dnsTarget = FuzzTarget(
    name: "dns",
    summary: "DNSMessage.query, .answer, .reply and .withID (the job resolver's DNS reader)",
    run: { data in
        let bytes = [UInt8](data)
        _ = DNSMessage.name(bytes, at: min(12, bytes.count))
        if let answer = DNSMessage.answer(bytes) {
            require(answer.responseCode <= 15, "response code \(answer.responseCode)")
        }
        guard let query = DNSMessage.query(bytes) else { return }
        require(query.headerAndQuestion.count <= bytes.count, "the question runs past the message")
        let reply = DNSMessage.reply(to: query, code: .nameError)
        guard let parsed = DNSMessage.answer(reply) else { fail("the reply to \(show(bytes)) does not parse") }
        require(parsed.id == query.id, "the reply's id changed")
        require(parsed.question == query.question, "the reply's question changed")
        require(parsed.responseCode == 3 && parsed.addresses.isEmpty, "the reply is not an empty NXDOMAIN")
        let swapped = DNSMessage.withID(0xBEEF, bytes)
        require(DNSMessage.query(swapped)?.question == query.question, "a new id changed the question")
        require(DNSMessage.withID(query.id, swapped) == bytes, "the id does not swap back")
    },
    seeds: {
        func query(_ name: String, type: UInt8) -> Data {
            var bytes: [UInt8] = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
            for label in name.split(separator: ".") { bytes += [UInt8(label.utf8.count)] + Array(label.utf8) }
            return Data(bytes + [0, 0, type, 0, 1])
        }
        var answer = [UInt8](query("api.example.com", type: 1))
        answer[2] = 0x81
        answer[3] = 0x80
        answer[7] = 1
        answer += [0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 198, 51, 100, 7]
        return [
            ("a", query("api.example.com", type: 1)), ("aaaa", query("x.test", type: 28)),
            ("answer", Data(answer)), ("loop", Data([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1])),
        ]
    }
)
