import Transport

/// A connector that follows the handshake honestly up to the proof and then sends a wrong one: what
/// a peer that knows the job id but not the secret, and skips checking the acceptor, would do. Returns
/// the error the acceptor's answer produced (a refusal, or the connection closed).
public func handshakeWithWrongProof(_ connection: Connection, identity: JobIdentity, rank: Int) -> Error? {
    var hello = ByteWriter()
    hello.string(identity.jobID); hello.u32(UInt32(identity.worldSize)); hello.i32(Int32(rank)); hello.bytes(randomBytes(32))
    hello.bytes([identity.authenticateFrames ? 1 : 0])
    do {
        try connection.sendFrame(.hello, tag: 0, bytes: hello.data, operation: "raw hello")
        _ = try connection.receiveFrame(expecting: .challenge, tag: 0, maxLength: 4096, operation: "raw challenge")
        try connection.sendFrame(.proof, tag: 0, bytes: randomBytes(32), operation: "raw proof")
        _ = try connection.receiveFrame(expecting: .welcome, tag: 0, maxLength: 4096, operation: "raw welcome")
        return nil
    } catch {
        return error
    }
}
