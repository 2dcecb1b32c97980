/// Just enough of the DNS wire format (RFC 1035) for ``EgressResolver``: read the one question of a
/// query, read the IPv4 addresses of an answer, and make the short replies the resolver gives on
/// its own (NXDOMAIN, REFUSED, an empty NOERROR). Every read is bounds-checked: the bytes come from
/// untrusted code in a sandbox or from a resolver beyond the node, and a malformed message is
/// `nil`, never a crash.
enum DNSMessage {
    /// Record types and the class the resolver cares about.
    static let typeA: UInt16 = 1
    static let typeCNAME: UInt16 = 5
    static let typeAAAA: UInt16 = 28
    static let classIN: UInt16 = 1

    /// Response codes.
    enum ResponseCode: UInt8 {
        case noError = 0
        case serverFailure = 2
        case nameError = 3  // NXDOMAIN
        case refused = 5
    }

    /// The one question of a query.
    struct Question: Equatable {
        /// Lowercased, without the trailing dot; empty for the root.
        let name: String
        let type: UInt16
        let recordClass: UInt16
    }

    /// A standard query: its id, its question and where the question ends in the message.
    struct Query {
        let id: UInt16
        let question: Question
        /// The header and question bytes, which a reply repeats.
        let headerAndQuestion: [UInt8]
    }

    /// An answer's response code and the IPv4 addresses (with their TTLs, seconds) it gives for
    /// the question's name, following CNAMEs inside the answer.
    struct Answer {
        let id: UInt16
        let responseCode: UInt8
        let question: Question
        let addresses: [(address: UInt32, ttl: UInt32)]
        let truncated: Bool
    }

    /// A query with exactly one question (QR 0, opcode QUERY); nil otherwise.
    static func query(_ bytes: [UInt8]) -> Query? {
        guard bytes.count >= 12, bytes.count <= 4096 else { return nil }
        let flags = UInt16(bytes[2]) << 8 | UInt16(bytes[3])
        guard flags & 0x8000 == 0, (flags >> 11) & 0xF == 0 else { return nil }
        guard read16(bytes, 4) == 1, read16(bytes, 6) == 0, read16(bytes, 8) == 0 else { return nil }
        guard let (question, end) = question(bytes, at: 12) else { return nil }
        return Query(id: read16(bytes, 0) ?? 0, question: question, headerAndQuestion: Array(bytes[0..<end]))
    }

    /// A response (QR 1) with one question; nil when malformed.
    static func answer(_ bytes: [UInt8]) -> Answer? {
        guard bytes.count >= 12, let id = read16(bytes, 0), let flags = read16(bytes, 2) else { return nil }
        guard flags & 0x8000 != 0, read16(bytes, 4) == 1, let answerCount = read16(bytes, 6) else { return nil }
        guard var (question, offset) = question(bytes, at: 12) else { return nil }
        var records: [(owner: String, type: UInt16, ttl: UInt32, data: ArraySlice<UInt8>, target: String?)] = []
        for _ in 0..<answerCount {
            guard let (owner, afterName) = name(bytes, at: offset), afterName + 10 <= bytes.count,
                let type = read16(bytes, afterName), let recordClass = read16(bytes, afterName + 2),
                let ttl = read32(bytes, afterName + 4), let length = read16(bytes, afterName + 8)
            else { return nil }
            let start = afterName + 10
            guard start + Int(length) <= bytes.count else { return nil }
            var target: String?
            if type == typeCNAME {
                guard let (name, _) = name(bytes, at: start) else { return nil }
                target = name
            }
            if recordClass == classIN {
                records.append((owner, type, ttl, bytes[start..<start + Int(length)], target))
            }
            offset = start + Int(length)
        }
        // The names that stand for the question's: itself and the CNAME chain inside the answer.
        var aliases: Set<String> = [question.name]
        var grew = true
        while grew {
            grew = false
            for record in records where record.type == typeCNAME && aliases.contains(record.owner) {
                if let target = record.target, aliases.insert(target).inserted { grew = true }
            }
        }
        let addresses = records.compactMap { record -> (UInt32, UInt32)? in
            guard record.type == typeA, record.data.count == 4, aliases.contains(record.owner) else { return nil }
            let value = record.data.reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            return (value, min(record.ttl, 0x7FFF_FFFF))
        }
        question = Question(name: question.name, type: question.type, recordClass: question.recordClass)
        return Answer(
            id: id,
            responseCode: UInt8(flags & 0xF),
            question: question,
            addresses: addresses.map { (address: $0.0, ttl: $0.1) },
            truncated: flags & 0x0200 != 0
        )
    }

    /// A reply to `query` made by the resolver itself: the question repeated, no records, `code`.
    static func reply(to query: Query, code: ResponseCode) -> [UInt8] {
        var bytes = query.headerAndQuestion
        let recursionDesired = bytes[2] & 0x01
        bytes[2] = 0x80 | recursionDesired  // QR, opcode QUERY, RD as asked
        bytes[3] = 0x80 | code.rawValue  // RA
        for index in 6..<12 { bytes[index] = 0 }
        return bytes
    }

    /// `message` with its id replaced.
    static func withID(_ id: UInt16, _ message: [UInt8]) -> [UInt8] {
        var bytes = message
        guard bytes.count >= 2 else { return bytes }
        bytes[0] = UInt8(id >> 8)
        bytes[1] = UInt8(id & 0xFF)
        return bytes
    }

    // MARK: Reading

    private static func question(_ bytes: [UInt8], at offset: Int) -> (Question, Int)? {
        guard let (name, end) = name(bytes, at: offset), let type = read16(bytes, end),
            let recordClass = read16(bytes, end + 2)
        else { return nil }
        return (Question(name: name, type: type, recordClass: recordClass), end + 4)
    }

    /// A (possibly compressed) name at `offset` and the offset just after it where it starts.
    /// Pointers may only point backwards and past the 12-byte header (a name in the header would
    /// change with the id), at most 64 are followed, and a name is at most 255 bytes.
    static func name(_ bytes: [UInt8], at offset: Int) -> (String, Int)? {
        var labels: [String] = []
        var position = offset
        var end: Int?
        var jumps = 0
        var length = 0
        while true {
            guard position < bytes.count else { return nil }
            let byte = bytes[position]
            switch byte & 0xC0 {
            case 0x00:
                let count = Int(byte)
                if count == 0 {
                    let name = labels.joined(separator: ".").lowercased()
                    return (name, end ?? position + 1)
                }
                guard position + 1 + count <= bytes.count else { return nil }
                length += count + 1
                guard length <= 255 else { return nil }
                let label = bytes[(position + 1)..<(position + 1 + count)]
                guard label.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ".") }) else { return nil }
                labels.append(String(decoding: label, as: UTF8.self))
                position += 1 + count
            case 0xC0:
                guard position + 1 < bytes.count else { return nil }
                let target = Int(byte & 0x3F) << 8 | Int(bytes[position + 1])
                guard target >= 12, target < position, jumps < 64 else { return nil }
                if end == nil { end = position + 2 }
                jumps += 1
                position = target
            default:
                return nil
            }
        }
    }

    static func read16(_ bytes: [UInt8], _ offset: Int) -> UInt16? {
        guard offset >= 0, offset + 2 <= bytes.count else { return nil }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    static func read32(_ bytes: [UInt8], _ offset: Int) -> UInt32? {
        guard offset >= 0, offset + 4 <= bytes.count else { return nil }
        return bytes[offset..<offset + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
    }
}
