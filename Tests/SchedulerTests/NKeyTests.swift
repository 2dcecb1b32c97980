import Foundation
import HangarShared
import Testing

@Suite("NKeys: NATS' printable Ed25519 keys")
struct NKeyTests {
    @Test("a new pair prints as U… and SU…, and the seed gives back the same public key")
    func roundTrip() throws {
        let pair = NKeyPair.generateUser()
        #expect(pair.publicKey.hasPrefix("U") && pair.publicKey.utf8.count == 56)
        #expect(pair.seed.hasPrefix("SU") && pair.seed.utf8.count == 58)
        #expect(try NKeyPair(seed: pair.seed) == pair)
        #expect(NKeyPair.isUserPublicKey(pair.publicKey))
        #expect(!NKeyPair.isUserPublicKey(pair.seed))
        #expect(NKeyPair.generateUser().publicKey != pair.publicKey)
    }

    @Test("a signature verifies with its own pair only")
    func signatures() throws {
        let pair = NKeyPair.generateUser()
        let nonce = Data("dGhpcyBpcyBhIG5vbmNl".utf8)
        let signature = try pair.sign(nonce)
        #expect(signature.count == 64)
        #expect(pair.verify(signature, of: nonce))
        #expect(!pair.verify(signature, of: Data("another nonce".utf8)))
        #expect(!NKeyPair.generateUser().verify(signature, of: nonce))
    }

    @Test("a changed character, a public key as seed, or garbage is refused")
    func malformed() {
        let pair = NKeyPair.generateUser()
        var characters = Array(pair.seed)
        characters[10] = characters[10] == "A" ? "B" : "A"
        #expect(throws: NKeyError.self) { try NKeyPair(seed: String(characters)) }
        #expect(throws: NKeyError.self) { try NKeyPair(seed: pair.publicKey) }
        for garbage in ["", "SU", "su" + pair.seed.dropFirst(2), String(repeating: "A", count: 4000), "SU\u{0}"] {
            #expect(throws: NKeyError.self) { try NKeyPair(seed: garbage) }
        }
        var key = Array(pair.publicKey)
        key[30] = key[30] == "A" ? "B" : "A"
        #expect(!NKeyPair.isUserPublicKey(String(key)))
    }
}
