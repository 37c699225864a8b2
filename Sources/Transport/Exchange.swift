#if canImport(Glibc)
import Glibc
#endif

// The duplex send/receive engine under every collective and point-to-point call. A call posts some
// messages to send and some to receive, each on a connection, and completes them all together on
// non-blocking sockets with one poll over every pending direction: so a rank can send to its right
// neighbour while receiving from its left one, or exchange with both neighbours at once, and no
// combination of blocking sends can deadlock. Each message travels as data frames of at most
// `chunkBytes`; the header and the payload leave in one sendmsg, straight from the caller's memory, and
// a received payload lands straight in the destination. Messages on the same connection and direction
// go strictly in the order posted (TCP keeps them so); different connections progress independently.
// A frame whose type, tag or length is not the one expected is rejected and the connection closed:
// ranks out of step fail loudly, never with wrong data.

/// How the engine frames and waits.
public struct ExchangeSettings: Sendable {
    public var chunkBytes: Int
    public var checksumPayloads: Bool
    public var policy: WaitPolicy
    public init(chunkBytes: Int, checksumPayloads: Bool, policy: WaitPolicy) {
        precondition(chunkBytes > 0 && chunkBytes <= FrameHeader.maxLength, "chunk of \(chunkBytes) bytes")
        self.chunkBytes = chunkBytes; self.checksumPayloads = checksumPayloads; self.policy = policy
    }
}

/// One message to send.
public struct OutgoingMessage {
    public var connection: Connection
    public var type: FrameHeader.MessageType
    public var tag: UInt32
    public var bytes: UnsafeRawBufferPointer
    public init(_ connection: Connection, type: FrameHeader.MessageType = .data, tag: UInt32, bytes: UnsafeRawBufferPointer) {
        self.connection = connection; self.type = type; self.tag = tag; self.bytes = bytes
    }
}

/// One message to receive, of exactly `buffer.count` bytes.
public struct IncomingMessage {
    public var connection: Connection
    public var type: FrameHeader.MessageType
    public var tag: UInt32
    public var buffer: UnsafeMutableRawBufferPointer
    public init(_ connection: Connection, type: FrameHeader.MessageType = .data, tag: UInt32, buffer: UnsafeMutableRawBufferPointer) {
        self.connection = connection; self.type = type; self.tag = tag; self.buffer = buffer
    }
}

/// Frames for `total` bytes cut into frames of at most `chunk` bytes (0 bytes: no frame at all, both
/// sides know the length).
@inline(__always) func frameCount(_ total: Int, _ chunk: Int) -> Int { total == 0 ? 0 : (total + chunk - 1) / chunk }

/// A frame header's 24 bytes, inline (no allocation on the hot path).
struct HeaderBytes {
    var words: (UInt64, UInt64, UInt64) = (0, 0, 0)
    mutating func withMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeMutableBytes(of: &words, body)
    }
}

private struct SendProgress {
    var frame = 0, offset = 0, frameLength = 0, frames = 0
    var header = HeaderBytes()
    /// The frame's MAC tag, sent after the payload on authenticated connections (0 bytes otherwise).
    var mac: (UInt64, UInt64) = (0, 0)
    var macBytes = 0
    var after: Int? // the earlier send on the same connection, which must finish first
    var done: Bool { frame >= frames }
}

private struct ReceiveProgress {
    var frame = 0, offset = 0, frames = 0
    var header = HeaderBytes()
    var inPayload = false, inTrailer = false
    /// The current frame's header once decoded (its payload CRC and, for the MAC, its bytes).
    var decoded = FrameHeader(type: .data, tag: 0, length: 0)
    var mac: (UInt64, UInt64) = (0, 0)
    var after: Int?
    var done: Bool { frame >= frames }
}

/// Sends every outgoing message and receives every incoming one, all at once. `onChunk(i, range)` runs
/// as soon as a chunk of incoming message i has landed and passed its checks (so a reduction overlaps
/// the transfer). Fails when no byte moves for the policy's timeout, naming a peer still owed.
public func exchangeMessages(sending outgoing: [OutgoingMessage], receiving incoming: [IncomingMessage],
                             settings: ExchangeSettings, operation: @autoclosure () -> String,
                             onChunk: (Int, Range<Int>) -> Void = { _, _ in }) throws {
    try outgoing.withUnsafeBufferPointer { sending in
        try incoming.withUnsafeBufferPointer { receiving in
            try exchangeMessages(sending: sending, receiving: receiving, settings: settings, operation: operation(), onChunk: onChunk)
        }
    }
}

/// The same over caller-owned message lists (a collective's step keeps them on its stack: a 4 KiB
/// exchange between two ranks on a lane takes about a microsecond, so allocations and clock reads count).
public func exchangeMessages(sending outgoing: UnsafeBufferPointer<OutgoingMessage>, receiving incoming: UnsafeBufferPointer<IncomingMessage>,
                             settings: ExchangeSettings, operation: @autoclosure () -> String,
                             onChunk: (Int, Range<Int>) -> Void = { _, _ in }) throws {
    try withUnsafeTemporaryAllocation(of: ClaimedConnection.self, capacity: outgoing.count + incoming.count) { claimedSpace in
        try withUnsafeTemporaryAllocation(of: SendProgress.self, capacity: outgoing.count) { sends in
            try withUnsafeTemporaryAllocation(of: ReceiveProgress.self, capacity: incoming.count) { receives in
                sends.initialize(repeating: SendProgress())
                receives.initialize(repeating: ReceiveProgress())
                defer { sends.deinitialize(); receives.deinitialize() }
                try exchangeMessages(outgoing, incoming, settings, operation(), onChunk, claimedSpace, sends, receives)
            }
        }
    }
}

/// A connection an exchange drives, and in which directions.
private struct ClaimedConnection {
    var connection: Connection
    var sending: Bool, receiving: Bool
}

private func exchangeMessages(_ outgoing: UnsafeBufferPointer<OutgoingMessage>, _ incoming: UnsafeBufferPointer<IncomingMessage>,
                              _ settings: ExchangeSettings, _ operation: @autoclosure () -> String,
                              _ onChunk: (Int, Range<Int>) -> Void, _ claimedSpace: UnsafeMutableBufferPointer<ClaimedConnection>,
                              _ sends: UnsafeMutableBufferPointer<SendProgress>, _ receives: UnsafeMutableBufferPointer<ReceiveProgress>) throws {
    let chunk = settings.chunkBytes
    // Claim each direction of each connection once for the whole call: what we send on, what we receive on.
    var claimedCount = 0
    func note(_ connection: Connection, sending: Bool) {
        if let i = claimedSpace[..<claimedCount].firstIndex(where: { $0.connection === connection }) {
            if sending { claimedSpace[i].sending = true } else { claimedSpace[i].receiving = true }
        } else {
            (claimedSpace.baseAddress! + claimedCount).initialize(to: ClaimedConnection(connection: connection, sending: sending, receiving: !sending))
            claimedCount += 1
        }
    }
    for message in outgoing { note(message.connection, sending: true) }
    for message in incoming { note(message.connection, sending: false) }
    let claimed = UnsafeMutableBufferPointer(rebasing: claimedSpace[..<claimedCount])
    for c in claimed { c.connection.claim(for: operation(), sending: c.sending, receiving: c.receiving) }
    defer {
        for c in claimed { c.connection.release(sending: c.sending, receiving: c.receiving) }
        claimed.deinitialize()
    }
    // Whether every connection is on a shared-memory lane: then a spinning wait makes no system call.
    let allOnLanes = claimed.allSatisfy { $0.connection.lane != nil }
    for i in outgoing.indices {
        sends[i].frames = frameCount(outgoing[i].bytes.count, chunk)
        sends[i].after = outgoing[..<i].lastIndex { $0.connection === outgoing[i].connection }
    }
    for i in incoming.indices {
        receives[i].frames = frameCount(incoming[i].buffer.count, chunk)
        receives[i].after = incoming[..<i].lastIndex { $0.connection === incoming[i].connection }
    }
    func startFrame(_ i: Int) {
        let message = outgoing[i]
        let start = sends[i].frame * chunk
        let length = min(chunk, message.bytes.count - start)
        let payload = UnsafeRawBufferPointer(rebasing: message.bytes[start..<(start + length)])
        let authenticated = message.connection.authenticatesFrames
        let header = FrameHeader(type: message.type, tag: message.tag, length: length,
                                 payloadChecksum: settings.checksumPayloads ? checksum(payload) : nil, authenticated: authenticated)
        sends[i].header.withMutableBytes { header.encode(into: $0.baseAddress!) }
        if authenticated {
            sends[i].mac = sends[i].header.withMutableBytes { message.connection.nextSendTag(header: UnsafeRawBufferPointer($0), payload: payload) }
        }
        sends[i].macBytes = authenticated ? FrameMAC.tagBytes : 0
        sends[i].frameLength = length
        sends[i].offset = 0
    }
    for i in outgoing.indices where sends[i].frames > 0 { startFrame(i) }

    // Pushes as much of send i as its socket takes now; true when a byte moved.
    func push(_ i: Int) throws -> Bool {
        let message = outgoing[i], connection = message.connection
        var moved = false
        while !sends[i].done {
            let start = sends[i].frame * chunk
            let length = sends[i].frameLength, offset = sends[i].offset
            let n: Int
            if offset < FrameHeader.size {
                let payload = UnsafeRawBufferPointer(start: message.bytes.baseAddress.map { $0 + start }, count: length)
                n = try sends[i].header.withMutableBytes {
                    try connection.trySend(UnsafeRawBufferPointer(rebasing: $0[offset...]), payload, operation: operation())
                }
            } else if offset < FrameHeader.size + length {
                let sent = offset - FrameHeader.size
                let rest = UnsafeRawBufferPointer(start: message.bytes.baseAddress! + start + sent, count: length - sent)
                let macBytes = sends[i].macBytes
                n = try withUnsafeBytes(of: sends[i].mac) { mac in
                    try connection.trySend(rest, UnsafeRawBufferPointer(rebasing: mac[0..<macBytes]), operation: operation())
                }
            } else {
                let sent = offset - FrameHeader.size - length, macBytes = sends[i].macBytes
                n = try withUnsafeBytes(of: sends[i].mac) { mac in
                    try connection.trySend(UnsafeRawBufferPointer(rebasing: mac[sent..<macBytes]), UnsafeRawBufferPointer(start: nil, count: 0),
                                           operation: operation())
                }
            }
            if n == 0 { break }
            moved = true
            sends[i].offset += n
            if sends[i].offset == FrameHeader.size + length + sends[i].macBytes {
                sends[i].frame += 1
                if !sends[i].done { startFrame(i) }
            }
        }
        return moved
    }

    // Pulls what has arrived for receive i; true when a byte moved.
    func pull(_ i: Int) throws -> Bool {
        let message = incoming[i], connection = message.connection
        let total = message.buffer.count
        var moved = false
        while !receives[i].done {
            let base = receives[i].frame * chunk
            let expectedLength = min(chunk, total - base)
            let offset = receives[i].offset
            let n: Int
            if receives[i].inTrailer {
                n = try withUnsafeMutableBytes(of: &receives[i].mac) {
                    try connection.tryReceive($0.baseAddress! + offset, FrameMAC.tagBytes - offset, expected: total, received: base + expectedLength,
                                              operation: operation())
                }
            } else if !receives[i].inPayload {
                n = try receives[i].header.withMutableBytes {
                    try connection.tryReceive($0.baseAddress! + offset, FrameHeader.size - offset,
                                              expected: total, received: base, operation: operation())
                }
            } else {
                n = try connection.tryReceive(message.buffer.baseAddress! + base + offset, expectedLength - offset,
                                              expected: total, received: base + offset, operation: operation())
            }
            if n == 0 { break }
            moved = true
            receives[i].offset += n
            let range = base..<(base + expectedLength)
            if receives[i].inPayload {
                guard receives[i].offset == expectedLength else { continue }
                if receives[i].decoded.payloadChecksum != nil {
                    try connection.verifyPayload(receives[i].decoded, checksum(UnsafeRawBufferPointer(rebasing: message.buffer[range])),
                                                 operation: operation())
                }
                receives[i].inPayload = false
                receives[i].offset = 0
                // An authenticated frame is complete only with its tag.
                if connection.authenticatesFrames { receives[i].inTrailer = true; continue }
            } else if receives[i].inTrailer {
                guard receives[i].offset == FrameMAC.tagBytes else { continue }
                try connection.verifyReceivedTag(receives[i].mac, header: receives[i].decoded,
                                                 payload: UnsafeRawBufferPointer(rebasing: message.buffer[range]), operation: operation())
                receives[i].inTrailer = false
                receives[i].offset = 0
            } else {
                guard receives[i].offset == FrameHeader.size else { continue }
                let decoded = receives[i].header.withMutableBytes { FrameHeader.decode($0.baseAddress!, maxLength: chunk) }
                switch decoded {
                case .failure(let error):
                    connection.close()
                    throw TransportError(.badFrame(error.reason), operation: operation(), peer: connection.peer)
                case .success(let header):
                    guard header.type == message.type, header.tag == message.tag, header.length == expectedLength else {
                        connection.close()
                        throw TransportError(.badFrame("expected a \(message.type) frame, tag \(describeTag(message.tag)), of \(expectedLength) bytes, got a \(header.type) frame, tag \(describeTag(header.tag)), of \(header.length) bytes (ranks out of step, or two groups sharing this connection at once?)"),
                                             operation: operation(), peer: connection.peer)
                    }
                    try connection.checkAuthentication(header, operation: operation())
                    receives[i].decoded = header
                }
                receives[i].inPayload = true
                receives[i].offset = 0
                continue
            }
            // The chunk is complete and checked: hand it over.
            onChunk(i, range)
            receives[i].frame += 1
        }
        return moved
    }

    func sendReady(_ i: Int) -> Bool { !sends[i].done && (sends[i].after.map { sends[$0].done } ?? true) }
    func receiveReady(_ i: Int) -> Bool { !receives[i].done && (receives[i].after.map { receives[$0].done } ?? true) }

    // The clock is read only once nothing moves: the inactivity timeout and the spin both count from there.
    var idleSince: Double?
    var fds: [pollfd] = []
    var waiting: [ClaimedConnection] = []
    while true {
        var progressed = false, pending = false
        for i in sends.indices where sendReady(i) {
            if try push(i) { progressed = true }
            if !sends[i].done { pending = true }
        }
        for i in receives.indices where receiveReady(i) {
            if try pull(i) { progressed = true }
            if !receives[i].done { pending = true }
        }
        if !pending { return } // a message waiting on an earlier one keeps that one pending
        if progressed { idleSince = nil; continue }
        let now = Deadline.now(), idle = idleSince ?? now
        idleSince = idle
        let spinUntil = idle + settings.policy.spinMicroseconds * 1e-6
        if allOnLanes && now < spinUntil {
            // Spinning on lanes alone needs no system call: the next pass looks at the rings again
            // (a dead peer is noticed once the spin ends and the wait blocks on its socket).
            if settings.policy.yieldWhileSpinning { sched_yield() }
            continue
        }
        let deadline = Deadline(seconds: settings.policy.timeoutSeconds, from: idle)
        // Nothing moved: wait for any pending direction. Blame a peer we still expect bytes from first.
        fds.removeAll(keepingCapacity: true)
        waiting.removeAll(keepingCapacity: true)
        var owed: PeerDescription?
        func watch(_ connection: Connection, sending: Bool, receiving: Bool) {
            let events = connection.pollEvents(sending: sending, receiving: receiving)
            if let k = waiting.firstIndex(where: { $0.connection === connection }) {
                fds[k].events |= events
                waiting[k].sending = waiting[k].sending || sending; waiting[k].receiving = waiting[k].receiving || receiving
            } else {
                fds.append(pollfd(fd: connection.fd, events: events, revents: 0))
                waiting.append(ClaimedConnection(connection: connection, sending: sending, receiving: receiving))
            }
        }
        for i in receives.indices where receiveReady(i) {
            watch(incoming[i].connection, sending: false, receiving: true)
            owed = owed ?? incoming[i].connection.peer
        }
        for i in sends.indices where sendReady(i) { watch(outgoing[i].connection, sending: true, receiving: false); owed = owed ?? outgoing[i].connection.peer }
        let lanes = waiting.contains { $0.connection.lane != nil }
        let spinning = now < spinUntil
        if spinning && waiting.allSatisfy({ $0.connection.lane != nil }) {
            // The same when only the pending connections are all lanes.
            if settings.policy.yieldWhileSpinning { sched_yield() }
            continue
        }
        if lanes && !spinning {
            // About to block: every lane announces the sleep, or turned ready meanwhile (then go again).
            var announced = 0
            for w in waiting where w.connection.lane != nil {
                guard w.connection.prepareToBlock(sending: w.sending, receiving: w.receiving) else { break }
                announced += 1
            }
            if announced < waiting.lazy.filter({ $0.connection.lane != nil }).count {
                for w in waiting where w.connection.lane != nil {
                    try w.connection.finishWait(sending: w.sending, receiving: w.receiving, revents: 0, operation: operation())
                }
                continue
            }
        }
        try waitForSockets(&fds, spinUntil: spinUntil, yielding: settings.policy.yieldWhileSpinning, deadline: deadline,
                           sliceMilliseconds: lanes ? SharedMemoryLane.sleepSliceMilliseconds : 1000, operation: operation(), peer: owed)
        for (k, w) in waiting.enumerated() where w.connection.lane != nil {
            try w.connection.finishWait(sending: w.sending, receiving: w.receiving, revents: fds[k].revents, operation: operation())
        }
    }
}

/// A tag as "group G, number N" (the layout the process groups use: 12 bits of group, 20 of number).
public func describeTag(_ tag: UInt32) -> String {
    tag >> 20 == 0 ? "\(tag)" : "\(tag & 0xF_FFFF) of group \(tag >> 20)"
}
