import Rendezvous
import Transport

// Point-to-point messages between two ranks of a group (torch.distributed send/recv and
// batch_isend_irecv). A message travels as `message` frames whose tag carries the group id and the
// caller's tag, so it can never be taken for collective data or for another group's message. Messages
// between two ranks arrive in the order they were sent; a receive expects the next message from that
// peer to carry its tag and length, and rejects anything else (the caller's sends and receives are out
// of step) rather than buffer or reorder. The batched form posts every send and receive at once and
// completes them together, so a pipeline stage can exchange with both neighbours without deadlock.

/// Caller tags are 20 bits of the frame tag.
public let maximumMessageTag = 0xF_FFFF

/// One posted operation of a batch.
public enum PointToPoint {
    case send(UnsafeRawBufferPointer, to: Int, tag: Int)
    case receive(UnsafeMutableRawBufferPointer, from: Int, tag: Int)

    public static func send(_ buffer: UnsafeMutableBufferPointer<Float>, to peer: Int, tag: Int) -> PointToPoint {
        .send(UnsafeRawBufferPointer(buffer), to: peer, tag: tag)
    }
    public static func receive(_ buffer: UnsafeMutableBufferPointer<Float>, from peer: Int, tag: Int) -> PointToPoint {
        .receive(UnsafeMutableRawBufferPointer(buffer), from: peer, tag: tag)
    }
}

/// Runs every send and receive of `operations` at once and returns when all are complete. Peers are
/// ranks of `group`; several operations with one peer run in the order listed. `timeoutSeconds` bounds
/// how long no byte may move (default: the group's timeout); a wait that expires names the peer.
public func batchSendReceive(_ operations: [PointToPoint], group: ProcessGroup, timeoutSeconds: Double? = nil) throws {
    var sending: [OutgoingMessage] = [], receiving: [IncomingMessage] = []
    func frameTag(_ tag: Int, _ peer: Int) -> UInt32 {
        precondition(tag >= 0 && tag <= maximumMessageTag, "message tag \(tag) outside 0...\(maximumMessageTag)")
        precondition(peer >= 0 && peer < group.worldSize && peer != group.rank, "peer \(peer) of \(group.name) in a group of \(group.worldSize)")
        return group.id << 20 | UInt32(tag)
    }
    for operation in operations {
        switch operation {
        case let .send(bytes, peer, tag):
            sending.append(OutgoingMessage(group.connection(to: peer), type: .message, tag: frameTag(tag, peer), bytes: bytes))
        case let .receive(buffer, peer, tag):
            receiving.append(IncomingMessage(group.connection(to: peer), type: .message, tag: frameTag(tag, peer), buffer: buffer))
        }
    }
    var settings = group.exchangeSettings
    if let timeoutSeconds { settings.policy.timeoutSeconds = timeoutSeconds }
    let description = { () -> String in
        let parts = operations.map { op -> String in
            switch op {
            case let .send(b, peer, tag): return "send \(b.count) B to \(peer) tag \(tag)"
            case let .receive(b, peer, tag): return "receive \(b.count) B from \(peer) tag \(tag)"
            }
        }
        return "point-to-point on \(group.name) (\(parts.joined(separator: ", ")))"
    }
    try guarded(group) {
        try exchangeMessages(sending: sending, receiving: receiving, settings: settings, operation: description())
    }
}

/// Sends `bytes` to `peer` (a rank of `group`); returns when the socket has taken all of it.
public func send(_ bytes: UnsafeRawBufferPointer, to peer: Int, tag: Int = 0, group: ProcessGroup, timeoutSeconds: Double? = nil) throws {
    try batchSendReceive([.send(bytes, to: peer, tag: tag)], group: group, timeoutSeconds: timeoutSeconds)
}

/// Receives exactly `buffer.count` bytes from `peer`, sent with the same tag.
public func receive(_ buffer: UnsafeMutableRawBufferPointer, from peer: Int, tag: Int = 0, group: ProcessGroup, timeoutSeconds: Double? = nil) throws {
    try batchSendReceive([.receive(buffer, from: peer, tag: tag)], group: group, timeoutSeconds: timeoutSeconds)
}
