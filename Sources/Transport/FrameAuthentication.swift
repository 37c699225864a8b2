@preconcurrency import Crypto
import FoundationEssentials
import Glibc

// Authenticated frames, for hosts that do not trust the network between them. The handshake proves
// both ends know the job secret but, alone, leaves the frames after it covered only by CRCs, which a
// relay on the path can recompute. With authentication on, both ends derive one key per direction from
// the secret and the handshake's two fresh nonces (HKDF-SHA256), and every later frame carries a
// 16-byte tag over its header and its payload, keyed by a per-direction frame counter: a rewritten,
// dropped, replayed or reordered frame fails the check and closes the connection. The tag is AES-GCM's
// (the frame counter as the nonce, never reused under one key; the header as the 24 bytes it seals, the
// payload as authenticated data): GHASH runs on carry-less multiplication, measured 4x faster here than
// HMAC-SHA256 even with the SHA instructions. Nothing is encrypted: the data is authenticated, not hidden.

/// One direction's key and frame counter.
public struct FrameMAC: @unchecked Sendable {
    public static let tagBytes = 16
    let key: SymmetricKey
    var counter: UInt64 = 0

    init(key: SymmetricKey) { self.key = key }

    /// The tag of the next frame (header bytes, then payload), advancing the counter.
    mutating func next(header: UnsafeRawBufferPointer, payload: UnsafeRawBufferPointer) -> (UInt64, UInt64) {
        var nonce = [UInt8](repeating: 0, count: 12)
        withUnsafeBytes(of: counter.littleEndian) { nonce.replaceSubrange(0..<8, with: $0) }
        counter &+= 1
        // Cannot fail: a 256-bit key, a 12-byte nonce, inputs far below GCM's limits.
        let sealed = try! AES.GCM.seal(header, using: key, nonce: try! AES.GCM.Nonce(data: nonce), authenticating: payload)
        return sealed.tag.withUnsafeBytes { ($0.loadUnaligned(fromByteOffset: 0, as: UInt64.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
    }
}

/// Both directions of one connection.
public struct FrameKeys: @unchecked Sendable {
    var sending: FrameMAC
    var receiving: FrameMAC

    /// Keys for the side that connected (`connector`) or accepted; both sides derive the same pair,
    /// mirrored, from the secret and the handshake transcript (hello with the connector's nonce, and the
    /// acceptor's nonce).
    public static func derive(secret: [UInt8], hello: [UInt8], acceptorNonce: [UInt8], connector: Bool) -> FrameKeys {
        func key(_ direction: String) -> SymmetricKey {
            HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: secret), salt: hello + acceptorNonce,
                                   info: Array("swift-ddp frames \(direction)".utf8), outputByteCount: 32)
        }
        let toAcceptor = key("connector to acceptor"), toConnector = key("acceptor to connector")
        return connector ? FrameKeys(sending: FrameMAC(key: toAcceptor), receiving: FrameMAC(key: toConnector))
                         : FrameKeys(sending: FrameMAC(key: toConnector), receiving: FrameMAC(key: toAcceptor))
    }
}
