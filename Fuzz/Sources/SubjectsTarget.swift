import Foundation
import HangarShared

/// The subject helpers in `Subjects`: the first input byte picks a token index (0...7, the range the
/// scheduler uses), the rest is a subject. NATS splits subjects at '.' bytes and its wildcards
/// match whole byte tokens, so `Subjects.token` must return exactly that byte token, and a name that
/// `isValidToken` accepts must come back unchanged from every subject built with it.
let subjectsTarget = FuzzTarget(
    name: "subjects",
    summary: "Subjects.token(_:at:), Subjects.isValidToken and the subject builders",
    run: { data in
        guard let first = data.first else { return }
        let index = Int(first % 8)
        let subject = lossyString(data.dropFirst())

        let natsTokens = Array(subject.utf8).split(separator: 0x2E, omittingEmptySubsequences: false)
        let token = Subjects.token(subject, at: index)
        let expected = index < natsTokens.count ? Array(natsTokens[index]) : nil
        require(
            token.map { Array($0.utf8) } == expected,
            "token(\(show(subject)), at: \(index)) is \(show(token.map(String.init))) but NATS sees \(show(expected.map { lossyString($0) }))"
        )

        // isValidToken against its definition: 1-64 bytes of [A-Za-z0-9_-].
        let name = subject
        let bytes = Array(name.utf8)
        let reference =
            (1...64).contains(bytes.count)
            && bytes.allSatisfy { byte in
                (0x30...0x39).contains(byte) || (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte)
                    || byte == 0x2D || byte == 0x5F
            }
        require(Subjects.isValidToken(name) == reference, "isValidToken(\(show(name))) is wrong")
        require(Subjects.isValidToken(name[...]) == reference, "isValidToken(Substring \(show(name))) is wrong")
        if let token { _ = Subjects.isValidToken(token) }

        guard reference else { return }
        // A valid name survives every subject it is put into.
        let built: [(String, Int)] = [
            (Subjects.submit(tenant: name), 2), (Subjects.cancel(tenant: name), 2),
            (Subjects.result(tenant: name, job: name), 2), (Subjects.result(tenant: name, job: name), 3),
            (Subjects.nodeCancel(node: name), 2), (Subjects.assign(node: name), 2),
            (Subjects.heartbeat(node: name), 2), (Subjects.nodeResult(node: name), 2), (Subjects.admin(name), 2),
        ]
        for (subject, at) in built {
            require(Subjects.token(subject, at: at).map(String.init) == name, "\(subject) does not give back \(name)")
        }
    },
    seeds: {
        let samples: [(String, UInt8, String)] = [
            ("submit", 2, Subjects.submit(tenant: "acme")),
            ("heartbeat", 2, Subjects.heartbeat(node: "node-1")),
            ("result", 3, Subjects.result(tenant: "acme", job: "j0123456789abcdefghjk0001")),
            ("admin", 2, Subjects.admin("drain")),
            ("wildcard", 2, Subjects.heartbeatWildcard),
            ("empty-tokens", 4, "a..b...c."),
            ("name-64", 0, String(repeating: "a", count: 64)),
            ("name-65", 0, String(repeating: "b", count: 65)),
            ("non-ascii", 2, "hangar.submit.caf\u{E9}"),
            ("long", 7, Array(repeating: "x", count: 10_000).joined(separator: ".")),
        ]
        return samples.map { ($0.0, Data([$0.1]) + Data($0.2.utf8)) } + [
            ("empty", Data()), ("index-only", Data([5])),
            ("invalid-utf8", Data([2]) + Data("hangar.node.".utf8) + Data([0xFF, 0xC3]) + Data(".heartbeat".utf8)),
        ]
    }
)
