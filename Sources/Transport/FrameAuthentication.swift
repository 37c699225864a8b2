@preconcurrency import Crypto
import Foundation

// Authenticated frames, for hosts that do not trust the network between them. The handshake proves
// both ends know the job secret but, alone, leaves the frames after it covered only by CRCs, which a
// relay on the path can recompute. With authentication on, both ends derive one key per direction from
// the secret and the handshake's two fresh nonces (HKDF-SHA256), and every later frame carries a
// 16-byte HMAC-SHA256 tag over its header, its payload and a per-direction frame counter: a rewritten,
// dropped, replayed or reordered frame fails the check and closes the connection. Nothing is encrypted:
// the data is authenticated, not hidden.

/// One direction's key and frame counter.
public struct FrameMAC: @unchecked Sendable {
    public static let tagBytes = 16
    let key: SymmetricKey
    var counter: UInt64 = 0

    init(key: SymmetricKey) { self.key = key }

    /// The tag of the next frame (header bytes, then payload), advancing the counter.
    mutating func next(header: UnsafeRawBufferPointer, payload: UnsafeRawBufferPointer) -> (UInt64, UInt64) {
        var hmac = HMAC<SHA256>(key: key)
        withUnsafeBytes(of: counter.littleEndian) { hmac.update(data: $0) }
        hmac.update(data: header)
        if payload.count > 0 { hmac.update(data: payload) }
        counter &+= 1
        return hmac.finalize().withUnsafeBytes { ($0.loadUnaligned(fromByteOffset: 0, as: UInt64.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
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
