import CNATS
import Foundation

/// One key's latest value in a ``KeyValueBucket`` and the revision that wrote it (the sequence
/// of that write in the bucket's stream; every write to the bucket gets a higher one).
public struct KeyValueEntry: Sendable, Equatable {
    public let value: Data
    public let revision: UInt64

    /// Wraps a value and its revision.
    public init(value: Data, revision: UInt64) {
        self.value = value
        self.revision = revision
    }
}

/// Why a conditional write to a ``KeyValueBucket`` failed. The two refusals are told apart from
/// any other failure, so that a compare-and-set loop can tell "somebody else wrote first" from
/// "the server did not answer".
public enum KeyValueWriteError: Error, Sendable, Equatable, CustomStringConvertible {
    /// ``KeyValueBucket/create(_:value:)``: the key already holds a value.
    case keyExists(bucket: String, key: String)
    /// ``KeyValueBucket/update(_:value:expectedRevision:)``: the key's latest revision is not
    /// `expected` (another writer got there first, or the key was deleted or never written).
    case wrongRevision(bucket: String, key: String, expected: UInt64)
    /// Anything else: no answer in time, connection closed, the bucket is gone…
    case failed(NATSError)

    public var description: String {
        switch self {
        case .keyExists(let bucket, let key):
            "key '\(key)' of bucket \(bucket) already holds a value: not created"
        case .wrongRevision(let bucket, let key, let expected):
            "key '\(key)' of bucket \(bucket) is no longer at revision \(expected): not updated"
        case .failed(let error):
            error.description
        }
    }
}

/// The threads of key-value reads and writes, apart from ``blockingPool``: a leader lease's renewal
/// must not wait behind other connections' connects, flushes and stream management there (each
/// may hold a thread up to its timeout), or the lease would lapse while its write is only queued.
/// Two: a lease makes one call at a time; a second lets another bucket user proceed meanwhile.
let keyValuePool = BlockingThreadPool(size: 2, name: "hangar.nats.kv")

extension JetStream {
    /// Binds to the key-value bucket `name`, creating it first if it does not exist: history 1
    /// (only the latest value of each key is kept), file storage, `replicas` copies (1 on a single
    /// server; 3 on a three-server cluster). An existing bucket is bound as it is: its replicas are
    /// not changed here.
    ///
    /// Bucket names may hold `A-Z a-z 0-9 _ -` only.
    public func keyValueBucket(_ name: String, replicas: Int = 1) async throws(NATSError) -> KeyValueBucket {
        guard KeyValueBucket.isValidBucketName(name) else {
            throw NATSError(
                kind: .invalidArgument,
                operation: "keyValueBucket(\(name))",
                message: "a bucket name may hold only A-Z, a-z, 0-9, '_' and '-'"
            )
        }
        guard replicas >= 1 && replicas <= 5 else {
            throw NATSError(
                kind: .invalidArgument,
                operation: "keyValueBucket(\(name))",
                message: "replicas must be 1 to 5, not \(replicas)"
            )
        }
        let context = UncheckedPointer(self.context)
        let store = try await runBlocking { () throws(NATSError) -> UncheckedPointer in
            var kv: OpaquePointer?
            // Bind first: nats-server 2.9 counts an add's storage reservation before it notices the
            // stream exists, so adding an existing bucket again can fail (see `ensureStream`).
            var status = js_KeyValue(&kv, context.pointer, name)
            if status != NATS_OK {
                let bucket = strdup(name)
                defer { free(bucket) }
                var config = kvConfig()
                try NATSError.check(kvConfig_Init(&config), "kvConfig_Init")
                config.Bucket = UnsafePointer(bucket)
                config.History = 1
                config.StorageType = js_FileStorage
                config.Replicas = Int32(replicas)
                // Two processes may create it at once: libnats then binds if the configurations match.
                status = js_CreateKeyValue(&kv, context.pointer, &config)
            }
            try NATSError.check(status, "keyValueBucket(\(name))")
            guard let kv else {
                throw NATSError(kind: .invalidArgument, operation: "keyValueBucket(\(name))", message: "nil")
            }
            return UncheckedPointer(kv)
        }
        return KeyValueBucket(store: store.pointer, name: name, owner: self)
    }

    /// Deletes the bucket `name` and every key in it.
    public func deleteKeyValueBucket(_ name: String) async throws(NATSError) {
        let context = UncheckedPointer(self.context)
        try await runBlocking { () throws(NATSError) in
            try NATSError.check(js_DeleteKeyValue(context.pointer, name), "deleteKeyValueBucket(\(name))")
        }
    }
}

/// A JetStream key-value bucket (a stream `KV_<name>` with subjects `$KV.<name>.<key>`): read a
/// key's latest value and revision, create a key only if it is absent, update it only if it is
/// still at a given revision (compare-and-set), delete it. Every call waits for the server and runs
/// off the cooperative thread pool, on threads of its own (`keyValuePool`).
///
/// The conditional writes are stream publishes with `Nats-Expected-Last-Subject-Sequence`, made
/// here rather than through `kvStore_Create`/`kvStore_Update`, which report a refused expectation
/// only as text: this way the server's error code (10071, wrong last sequence) tells a lost race
/// apart from a failure. The bucket is used through the JetStream context's default API prefix
/// (no domain), as the rest of Hangar does.
public final class KeyValueBucket: @unchecked Sendable {
    // @unchecked Sendable: `store` is a libnats kvStore, which locks internally; `owner` keeps the
    // JetStream context (and through it the connection) alive as long as the bucket is used.
    private let store: OpaquePointer
    private let owner: JetStream
    /// The bucket's name.
    public let name: String

    init(store: OpaquePointer, name: String, owner: JetStream) {
        self.store = store
        self.name = name
        self.owner = owner
    }

    deinit {
        kvStore_Destroy(store)
    }

    /// The latest value of `key` and its revision, or nil if the key was never written or its
    /// latest write is a delete.
    public func get(_ key: String) async throws(NATSError) -> KeyValueEntry? {
        try Self.checkKey(key, bucket: name, operation: "get")
        let store = UncheckedPointer(self.store)
        let name = self.name
        return try await keyValuePool.run { () throws(NATSError) -> KeyValueEntry? in
            var entry: OpaquePointer?
            let status = kvStore_Get(&entry, store.pointer, key)
            if status == NATS_NOT_FOUND {
                return nil
            }
            try NATSError.check(status, "get '\(key)' of bucket \(name)")
            guard let entry else { return nil }
            defer { kvEntry_Destroy(entry) }
            let length = Int(kvEntry_ValueLen(entry))
            let value: Data
            if length > 0, let bytes = kvEntry_Value(entry) {
                value = Data(bytes: bytes, count: length)
            } else {
                value = Data()
            }
            return KeyValueEntry(value: value, revision: kvEntry_Revision(entry))
        }
    }

    /// Writes `value` to `key` only if the key holds no value (never written, or deleted), and
    /// returns the new revision. Throws ``KeyValueWriteError/keyExists(bucket:key:)`` if it holds one.
    @discardableResult
    public func create(_ key: String, value: Data) async throws(KeyValueWriteError) -> UInt64 {
        do throws(KeyValueWriteError) {
            return try await conditionalPut(key, value: value, expected: nil)
        } catch .wrongRevision {
            // A deleted key keeps its delete marker as its latest revision: create over it.
            let marker: UInt64?
            do throws(NATSError) {
                marker = try await deleteMarkerRevision(key)
            } catch {
                throw .failed(error)
            }
            guard let marker else { throw .keyExists(bucket: name, key: key) }
            do throws(KeyValueWriteError) {
                return try await conditionalPut(key, value: value, expected: marker)
            } catch .wrongRevision {
                throw .keyExists(bucket: name, key: key)
            }
        }
    }

    /// Writes `value` to `key` only if the key's latest revision is `expectedRevision` (the
    /// compare-and-set), and returns the new revision. Throws
    /// ``KeyValueWriteError/wrongRevision(bucket:key:expected:)`` if another write came first.
    @discardableResult
    public func update(
        _ key: String,
        value: Data,
        expectedRevision: UInt64
    ) async throws(KeyValueWriteError) -> UInt64 {
        guard expectedRevision > 0 else {
            throw .failed(
                NATSError(
                    kind: .invalidArgument,
                    operation: "update '\(key)' of bucket \(name)",
                    message: "the expected revision must be above 0 (use create for an absent key)"
                )
            )
        }
        return try await conditionalPut(key, value: value, expected: expectedRevision)
    }

    /// Deletes `key` (writes a delete marker; ``get(_:)`` then returns nil and
    /// ``create(_:value:)`` succeeds again).
    public func delete(_ key: String) async throws(NATSError) {
        try Self.checkKey(key, bucket: name, operation: "delete")
        let store = UncheckedPointer(self.store)
        let name = self.name
        try await keyValuePool.run { () throws(NATSError) in
            try NATSError.check(kvStore_Delete(store.pointer, key), "delete '\(key)' of bucket \(name)")
        }
    }

    /// Publishes `value` on the key's subject expecting its last revision to be `expected` (nil: no
    /// message at all).
    private func conditionalPut(
        _ key: String,
        value: Data,
        expected: UInt64?
    ) async throws(KeyValueWriteError) -> UInt64 {
        let name = self.name
        let operation = expected == nil ? "create" : "update"
        do throws(NATSError) {
            try Self.checkKey(key, bucket: name, operation: operation)
        } catch {
            throw .failed(error)
        }
        let context = UncheckedPointer(owner.context)
        let result: Result<UInt64, KeyValueWriteError>
        do throws(NATSError) {
            result = try await keyValuePool.run { () throws(NATSError) -> Result<UInt64, KeyValueWriteError> in
                let msg = try makeNATSMessage(subject: "$KV.\(name).\(key)", replyTo: nil, payload: value, headers: [:])
                defer { natsMsg_Destroy(msg) }
                var options = jsPubOptions()
                try NATSError.check(jsPubOptions_Init(&options), "jsPubOptions_Init")
                if let expected {
                    options.ExpectLastSubjectSeq = expected
                } else {
                    options.ExpectNoMessage = true
                }
                var ack: UnsafeMutablePointer<jsPubAck>?
                var code = jsErrCode(rawValue: 0)
                let status = js_PublishMsg(&ack, context.pointer, msg, &options, &code)
                defer { if let ack { jsPubAck_Destroy(ack) } }
                if status != NATS_OK && code == JSStreamWrongLastSequenceErr {
                    return .failure(.wrongRevision(bucket: name, key: key, expected: expected ?? 0))
                }
                try NATSError.check(status, "\(operation) '\(key)' of bucket \(name) [js error \(code.rawValue)]")
                guard let ack else {
                    throw NATSError(kind: .invalidArgument, operation: "\(operation) '\(key)'", message: "no ack")
                }
                return .success(ack.pointee.Sequence)
            }
        } catch {
            throw .failed(error)
        }
        return try result.get()
    }

    /// The revision of the key's latest write if that write is a delete or purge marker; nil if
    /// the key holds a value (or was never written).
    private func deleteMarkerRevision(_ key: String) async throws(NATSError) -> UInt64? {
        let context = UncheckedPointer(owner.context)
        let name = self.name
        return try await keyValuePool.run { () throws(NATSError) -> UInt64? in
            var msg: OpaquePointer?
            var code = jsErrCode(rawValue: 0)
            let status = js_GetLastMsg(&msg, context.pointer, "KV_\(name)", "$KV.\(name).\(key)", nil, &code)
            if status == NATS_NOT_FOUND || code == JSNoMessageFoundErr {
                return nil
            }
            try NATSError.check(status, "read '\(key)' of bucket \(name) [js error \(code.rawValue)]")
            guard let msg else { return nil }
            defer { natsMsg_Destroy(msg) }
            var operation: UnsafePointer<CChar>?
            guard natsMsgHeader_Get(msg, "KV-Operation", &operation) == NATS_OK, let operation else {
                return nil
            }
            let text = String(cString: operation)
            return text == "DEL" || text == "PURGE" ? natsMsg_GetSequence(msg) : nil
        }
    }

    /// Keys as libnats accepts them: `A-Z a-z 0-9 - / _ = .`, not starting or ending with `.`
    /// (no wildcards, no spaces: the key is part of a subject).
    static func checkKey(_ key: String, bucket: String, operation: String) throws(NATSError) {
        let allowed = key.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "/") || byte == UInt8(ascii: "_")
                || byte == UInt8(ascii: "=") || byte == UInt8(ascii: ".")
        }
        guard !key.isEmpty, allowed, !key.hasPrefix("."), !key.hasSuffix(".") else {
            throw NATSError(
                kind: .invalidArgument,
                operation: "\(operation) '\(key)' of bucket \(bucket)",
                message: "a key may hold only A-Z, a-z, 0-9 and - / _ = . and may not start or end with '.'"
            )
        }
    }

    static func isValidBucketName(_ name: String) -> Bool {
        !name.isEmpty
            && name.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                    || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
            }
    }
}
