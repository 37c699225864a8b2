import Crypto

/// What every connection of one job must agree on. The secret never crosses the wire: each side proves
/// it knows it with an HMAC-SHA256 over both sides' fresh nonces (challenge-response, both directions).
public struct JobIdentity: Sendable {
    public var jobID: String
    public var worldSize: Int
    public var secret: [UInt8]
    /// Every frame after the handshake carries a MAC tag (AES-GCM) (FrameAuthentication.swift); both ends must agree.
    public var authenticateFrames: Bool
    public init(jobID: String, worldSize: Int, secret: [UInt8], authenticateFrames: Bool = false) {
        self.jobID = jobID; self.worldSize = worldSize; self.secret = secret; self.authenticateFrames = authenticateFrames
    }
}

/// The connection handshake, run before any other frame:
///   connector -> hello     {job id, world size, rank, nonceC, frame authentication on/off}
///   acceptor  -> challenge {nonceS, HMAC(secret, "acceptor" | hello | nonceS)}   (or refusal: wrong job)
///   connector -> proof     {HMAC(secret, "connector" | hello | nonceS)}          (after checking the acceptor)
///   acceptor  -> welcome   {}                                                   (or refusal: bad proof)
/// A peer that fails any step never gets past the handshake; the acceptor closes the connection. With
/// frame authentication on, both ends then derive per-direction frame keys from the secret and both
/// nonces, and every later frame carries a MAC tag.
public enum Handshake {
    static let nonceBytes = 32
    /// The whole acceptor side must finish within this (or the connection's timeout, when shorter):
    /// an unauthenticated peer gets no more, however it paces its bytes.
    public static let timeoutCap = 10.0
    /// All a refused connector is told.
    public static let refusalText = "refused by the acceptor: wrong job, world size or secret (the acceptor's log says which)"

    /// Runs the connector side; `rank` is -1 for a store client that is not a rank.
    public static func connect(_ connection: Connection, identity: JobIdentity, rank: Int) throws {
        let operation = "handshake (as rank \(rank))"
        let nonce = randomBytes(nonceBytes)
        var hello = ByteWriter()
        hello.string(identity.jobID); hello.u32(UInt32(identity.worldSize)); hello.i32(Int32(rank)); hello.bytes(nonce)
        hello.bytes([identity.authenticateFrames ? 1 : 0])
        try connection.sendFrame(.hello, tag: 0, bytes: hello.data, operation: operation)
        let challenge = try connection.receiveFrame(expecting: .challenge, tag: 0, maxLength: 4096, operation: operation)
        var reader = ByteReader(challenge)
        guard let serverNonce = reader.bytes(nonceBytes), let serverMAC = reader.bytes(32), reader.atEnd else {
            connection.close()
            throw TransportError(.badFrame("malformed challenge"), operation: operation, peer: connection.peer)
        }
        guard verify(serverMAC, "acceptor", hello.data, serverNonce, identity) else {
            connection.close()
            throw TransportError(.refused("the peer does not know the job secret"), operation: operation, peer: connection.peer)
        }
        try connection.sendFrame(.proof, tag: 0, bytes: mac("connector", hello.data, serverNonce, identity), operation: operation)
        _ = try connection.receiveFrame(expecting: .welcome, tag: 0, maxLength: 4096, operation: operation)
        if identity.authenticateFrames {
            connection.frameKeys = FrameKeys.derive(secret: identity.secret, hello: hello.data, acceptorNonce: serverNonce, connector: true)
        }
    }

    /// Runs the acceptor side and returns the rank the peer stated (-1 for store clients).
    /// `onRefusal` hears why a peer was turned away (for the log); the connection is closed.
    public static func accept(_ connection: Connection, identity: JobIdentity,
                              onRefusal: (String) -> Void = { _ in }) throws -> Int {
        let operation = "handshake"
        connection.overallDeadline = Deadline(seconds: min(timeoutCap, connection.policy.timeoutSeconds))
        defer { connection.overallDeadline = nil }
        // The peer is not authenticated yet: it learns only that it was refused, nothing about this job
        // (its id, world size); the reason goes to this side's log.
        func refuse(_ reason: String) -> TransportError {
            try? connection.sendFrame(.refusal, tag: 0, bytes: Array(Self.refusalText.utf8), operation: operation)
            connection.close()
            onRefusal("refused \(connection.peer): \(reason)")
            return TransportError(.refused(reason), operation: operation, peer: connection.peer)
        }
        let hello: [UInt8]
        do {
            hello = try connection.receiveFrame(expecting: .hello, tag: 0, maxLength: 4096, operation: operation)
        } catch let error as TransportError {
            onRefusal("refused \(connection.peer): \(error)")
            connection.close()
            throw error
        }
        var reader = ByteReader(hello)
        guard let job = reader.string(), let world = reader.u32(), let rank = reader.i32(),
              let _ = reader.bytes(nonceBytes), let mode = reader.bytes(1), mode[0] <= 1, reader.atEnd else { throw refuse("malformed hello") }
        guard job == identity.jobID else { throw refuse("job id '\(job)' is not this job ('\(identity.jobID)')") }
        guard Int(world) == identity.worldSize else { throw refuse("world size \(world) does not match \(identity.worldSize)") }
        guard rank >= -1 && Int(rank) < identity.worldSize else { throw refuse("rank \(rank) outside 0..<\(identity.worldSize)") }
        guard (mode[0] == 1) == identity.authenticateFrames else {
            throw refuse("frame authentication is \(identity.authenticateFrames ? "on" : "off") here but \(mode[0] == 1 ? "on" : "off") at the peer (SWIFT_DDP_AUTH_FRAMES / --authenticate-frames must match)")
        }
        let nonce = randomBytes(nonceBytes)
        try connection.sendFrame(.challenge, tag: 0, bytes: nonce + mac("acceptor", hello, nonce, identity), operation: operation)
        let proof: [UInt8]
        do {
            proof = try connection.receiveFrame(expecting: .proof, tag: 0, maxLength: 64, operation: operation)
        } catch let error as TransportError {
            onRefusal("refused \(connection.peer): \(error)")
            throw error
        }
        guard verify(proof, "connector", hello, nonce, identity) else { throw refuse("wrong job secret") }
        try connection.sendFrame(.welcome, tag: 0, bytes: [], operation: operation)
        if identity.authenticateFrames {
            connection.frameKeys = FrameKeys.derive(secret: identity.secret, hello: hello, acceptorNonce: nonce, connector: false)
        }
        connection.peer.rank = rank >= 0 ? Int(rank) : nil
        return Int(rank)
    }

    static func transcript(_ role: String, _ hello: [UInt8], _ nonce: [UInt8]) -> [UInt8] { Array(role.utf8) + hello + nonce }

    static func mac(_ role: String, _ hello: [UInt8], _ nonce: [UInt8], _ identity: JobIdentity) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: transcript(role, hello, nonce), using: SymmetricKey(data: identity.secret)))
    }

    static func verify(_ code: [UInt8], _ role: String, _ hello: [UInt8], _ nonce: [UInt8], _ identity: JobIdentity) -> Bool {
        HMAC<SHA256>.isValidAuthenticationCode(code, authenticating: transcript(role, hello, nonce),
                                               using: SymmetricKey(data: identity.secret))
    }
}

public func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
}

/// Little-endian field writer/reader for control payloads.
public struct ByteWriter {
    public var data: [UInt8] = []
    public init() {}
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
    public mutating func i32(_ v: Int32) { u32(UInt32(bitPattern: v)) }
    public mutating func i64(_ v: Int64) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
    public mutating func bytes(_ b: [UInt8]) { data.append(contentsOf: b) }
    public mutating func string(_ s: String) { let b = Array(s.utf8); u32(UInt32(b.count)); bytes(b) }
    public mutating func blob(_ b: [UInt8]) { u32(UInt32(b.count)); bytes(b) }
}

public struct ByteReader {
    let data: [UInt8]
    var offset = 0
    public init(_ data: [UInt8]) { self.data = data }
    public var atEnd: Bool { offset == data.count }
    public mutating func bytes(_ n: Int) -> [UInt8]? {
        guard n >= 0, offset + n <= data.count else { return nil }
        defer { offset += n }
        return Array(data[offset..<(offset + n)])
    }
    public mutating func u32() -> UInt32? {
        guard let b = bytes(4) else { return nil }
        return UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24
    }
    public mutating func i32() -> Int32? { u32().map { Int32(bitPattern: $0) } }
    public mutating func i64() -> Int64? {
        guard let lo = u32(), let hi = u32() else { return nil }
        return Int64(bitPattern: UInt64(lo) | UInt64(hi) << 32)
    }
    public mutating func blob(max: Int) -> [UInt8]? {
        guard let n = u32(), Int(n) <= max else { return nil }
        return bytes(Int(n))
    }
    public mutating func string(max: Int = 4096) -> String? { blob(max: max).map { String(decoding: $0, as: UTF8.self) } }
}
