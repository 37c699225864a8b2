#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import Support
import Synchronization

/// How long to wait and how to wait. A blocking poll wake-up costs ~30 us more than spinning in these
/// VMs, but spinning starves peers when ranks outnumber cores: spin a bounded time, then block.
public struct WaitPolicy: Sendable {
    /// Inactivity timeout: an operation fails when no byte moves for this long.
    public var timeoutSeconds: Double
    /// Busy-poll this long before blocking in poll(2); 0 blocks at once.
    public var spinMicroseconds: Double
    /// Yield the core between spin polls (when ranks outnumber cores).
    public var yieldWhileSpinning: Bool
    public init(timeoutSeconds: Double = 30, spinMicroseconds: Double = 50, yieldWhileSpinning: Bool = false) {
        self.timeoutSeconds = timeoutSeconds; self.spinMicroseconds = spinMicroseconds; self.yieldWhileSpinning = yieldWhileSpinning
    }
}

/// One established TCP connection (non-blocking descriptor) to a known peer, with framed,
/// deadline-bounded send and receive. Closed on deinit or on any rejected frame.
public final class Connection: @unchecked Sendable {
    public private(set) var fd: Int32
    public var peer: PeerDescription
    public var policy: WaitPolicy
    /// A cap on every wait however much data moves: set while a handshake runs, so a peer that drips
    /// one byte at a time cannot hold the connection past it.
    public var overallDeadline: Deadline?
    /// Per-direction MAC keys when the job authenticates frames (set by the handshake). Two properties,
    /// so that one thread sending while another receives never touch the same one.
    private var sendingMAC: FrameMAC?, receivingMAC: FrameMAC?
    public var frameKeys: FrameKeys? {
        get { sendingMAC.flatMap { s in receivingMAC.map { FrameKeys(sending: s, receiving: $0) } } }
        set { sendingMAC = newValue?.sending; receivingMAC = newValue?.receiving; authenticatesFrames = newValue != nil }
    }
    /// Whether frames carry MAC tags (fixed once the handshake is over).
    public private(set) var authenticatesFrames = false
    /// Set while an exchange drives a direction of this connection: two at once would interleave their
    /// frames. The directions are separate, so one thread may send while another receives.
    private let sendingInUse = Atomic<Bool>(false), receivingInUse = Atomic<Bool>(false)

    /// Set once both ends mapped a shared-memory lane (same host, SharedMemoryLane.swift): every byte
    /// then travels through it, and the socket carries only doorbells and, when the peer dies, its EOF.
    public private(set) var lane: SharedMemoryLane?

    /// Moves the byte stream onto `lane`; both ends do it at the same point of the stream.
    public func attach(_ lane: SharedMemoryLane) { self.lane = lane }
    /// A lane's peer closed its socket (exited or died). What it wrote before is still in the ring and
    /// is read first; only an empty (or full) ring then fails, as EOF does on a socket.
    private let lanePeerGone = Atomic<Bool>(false)

    public init(fd: Int32, peer: PeerDescription, policy: WaitPolicy) {
        self.fd = fd; self.peer = peer; self.policy = policy
    }

    deinit { close() }

    /// Marks the connection as driven by the caller until `release`; a second claim at the same time
    /// is a bug in the caller (two groups sharing this connection used concurrently) and traps.
    public func claim(for operation: @autoclosure () -> String, sending: Bool = true, receiving: Bool = true) {
        func take(_ flag: borrowing Atomic<Bool>) {
            let (exchanged, _) = flag.compareExchange(expected: false, desired: true, ordering: .acquiring)
            precondition(exchanged, "\(operation()): the connection with \(peer) is already in use by another call; groups that share two ranks must not run collectives at the same time")
        }
        if sending { take(sendingInUse) }
        if receiving { take(receivingInUse) }
    }

    public func release(sending: Bool = true, receiving: Bool = true) {
        if sending { sendingInUse.store(false, ordering: .releasing) }
        if receiving { receivingInUse.store(false, ordering: .releasing) }
    }

    /// Serializes close and shutdown: a thread stopping a connection (shutdown) while its owner closes it
    /// must not shut down whatever socket reuses the number next (ThreadSanitizer found the race). A
    /// pthread lock (Support.Lock) rather than Synchronization's Mutex, whose futex ThreadSanitizer cannot see.
    private let descriptorLock = Lock()

    public func close() {
        descriptorLock.withLock {
            if fd >= 0 { Glibc.close(fd); fd = -1 }
        }
    }

    /// Ends both directions without releasing the descriptor: safe while another thread waits on it
    /// (its poll wakes and its next receive sees EOF), unlike close, whose number could be reused.
    public func shutdown() {
        descriptorLock.withLock {
            if fd >= 0 { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    // MARK: non-blocking primitives (used by collectives that drive several connections at once)

    /// Sends what the socket takes now; returns the byte count (0 when it would block).
    public func trySend(_ p: UnsafeRawPointer, _ count: Int, operation: @autoclosure () -> String) throws -> Int {
        precondition(fd >= 0, "send on a closed connection")
        if lane != nil { return try laneSend(UnsafeRawBufferPointer(start: p, count: count), UnsafeRawBufferPointer(start: nil, count: 0), operation: operation()) }
        return try systemCall("send", operation(), peer: peer) { Glibc.send(fd, p, count, Int32(MSG_NOSIGNAL)) } ?? 0
    }

    /// Vectored send of two pieces (a frame header and its payload straight from tensor memory) in one
    /// sendmsg(2); returns the bytes taken (0 when it would block).
    public func trySend(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer,
                        operation: @autoclosure () -> String) throws -> Int {
        precondition(fd >= 0, "send on a closed connection")
        if lane != nil { return try laneSend(first, second, operation: operation()) }
        var vectors = [iovec(iov_base: UnsafeMutableRawPointer(mutating: first.baseAddress), iov_len: first.count),
                       iovec(iov_base: UnsafeMutableRawPointer(mutating: second.baseAddress), iov_len: second.count)]
        return try vectors.withUnsafeMutableBufferPointer { v in
            var message = msghdr()
            message.msg_iov = v.baseAddress
            message.msg_iovlen = second.count > 0 ? 2 : 1
            return try systemCall("sendmsg", operation(), peer: peer) { Glibc.sendmsg(fd, &message, Int32(MSG_NOSIGNAL)) } ?? 0
        }
    }

    /// Receives what is there now; 0 when nothing is ready; throws peerClosed on EOF.
    public func tryReceive(_ p: UnsafeMutableRawPointer, _ count: Int, expected: Int, received: Int,
                           operation: @autoclosure () -> String) throws -> Int {
        precondition(fd >= 0, "receive on a closed connection")
        if let lane {
            let n = lane.read(into: p, count: count)
            if n > 0 && lane.peerAwaitsRoom() { ringDoorbell() }
            if n == 0 && count > 0 && lanePeerGone.load(ordering: .acquiring) {
                throw TransportError(.peerClosed(expected: expected, received: received), operation: operation(), peer: peer)
            }
            return n
        }
        guard let n = try systemCall("recv", operation(), peer: peer, { Glibc.recv(fd, p, count, 0) }) else { return 0 }
        if n == 0 && count > 0 {
            throw TransportError(.peerClosed(expected: expected, received: received), operation: operation(), peer: peer)
        }
        return n
    }

    private func laneSend(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer,
                          operation: @autoclosure () -> String) throws -> Int {
        let n = lane!.write(first, second)
        if n > 0 && lane!.peerAwaitsData() { ringDoorbell() }
        if n == 0 && first.count + second.count > 0 && lanePeerGone.load(ordering: .acquiring) {
            throw TransportError(.peerClosed(expected: first.count + second.count, received: 0), operation: operation(), peer: peer)
        }
        return n
    }

    /// Wakes the peer sleeping on this lane. Best effort: a full socket already holds a doorbell, and a
    /// gone peer shows up as EOF at the next wait.
    private func ringDoorbell() {
        guard fd >= 0 else { return }
        var byte: UInt8 = 1
        _ = Glibc.send(fd, &byte, 1, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
    }

    // MARK: waiting (the socket, or the lane's doorbells)

    /// What to poll for while waiting to send or receive: on a lane every wake-up is a doorbell byte
    /// (readable), whichever direction waits.
    public func pollEvents(sending: Bool, receiving: Bool) -> Int16 {
        lane != nil ? Int16(POLLIN) : (sending ? Int16(POLLOUT) : 0) | (receiving ? Int16(POLLIN) : 0)
    }

    /// Called just before blocking: a lane announces the sleep to its peer (who then rings); false when
    /// the lane became ready meanwhile, so the caller must try again instead of blocking.
    public func prepareToBlock(sending: Bool, receiving: Bool) -> Bool {
        guard let lane else { return true }
        return !lanePeerGone.load(ordering: .acquiring) && lane.prepareToSleep(sending: sending, receiving: receiving)
    }

    /// Called after a wait that polled this connection with `revents`: a lane withdraws its announcement
    /// and drains the doorbells; EOF there marks the peer gone (the next send or receive that finds
    /// nothing to move fails with peerClosed, as on a socket).
    public func finishWait(sending: Bool, receiving: Bool, revents: Int16, operation: @autoclosure () -> String) throws {
        guard let lane else { return }
        lane.endSleep(sending: sending, receiving: receiving)
        guard revents != 0, fd >= 0 else { return }
        var bytes = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        while true {
            let n: Int?
            do {
                n = try withUnsafeMutableBytes(of: &bytes) { b in
                    try systemCall("recv", operation(), peer: peer) { Glibc.recv(fd, b.baseAddress, b.count, Int32(MSG_DONTWAIT)) }
                }
            } catch let error as TransportError {
                // A reset socket is the peer gone too; its bytes already in the ring still count.
                guard case .system(_, ECONNRESET) = error.kind else { throw error }
                n = 0
            }
            guard let n else { return }
            if n == 0 { lanePeerGone.store(true, ordering: .releasing); return }
        }
    }

    /// Waits until the socket is readable or writable (or the lane has bytes or room), spinning first;
    /// throws on the deadline.
    public func wait(for events: Int16, deadline: Deadline, operation: @autoclosure () -> String) throws {
        let sending = events & Int16(POLLOUT) != 0, receiving = events & Int16(POLLIN) != 0
        var fds = [pollfd(fd: fd, events: pollEvents(sending: sending, receiving: receiving), revents: 0)]
        let spinUntil = Deadline.now() + policy.spinMicroseconds * 1e-6
        repeat {
            fds[0].revents = 0
            let blocking = Deadline.now() >= spinUntil
            if blocking && !prepareToBlock(sending: sending, receiving: receiving) { return }
            try waitForSockets(&fds, spinUntil: spinUntil, yielding: policy.yieldWhileSpinning, deadline: deadline,
                               sliceMilliseconds: lane == nil ? 1000 : SharedMemoryLane.sleepSliceMilliseconds,
                               operation: operation(), peer: peer)
            if lane != nil {
                try finishWait(sending: sending, receiving: receiving, revents: fds[0].revents, operation: operation())
                return // the caller retries its send or receive
            }
        } while fds[0].revents == 0
    }

    // MARK: blocking helpers

    /// The deadline of the next wait: the inactivity timeout, or the overall cap when that comes first.
    func nextDeadline() -> Deadline {
        let inactivity = Deadline(seconds: policy.timeoutSeconds)
        guard let cap = overallDeadline, cap.at < inactivity.at else { return inactivity }
        return cap
    }

    public func sendAll(_ p: UnsafeRawPointer, _ count: Int, operation: @autoclosure () -> String) throws {
        var done = 0
        var deadline = nextDeadline()
        while done < count {
            let n = try trySend(p + done, count - done, operation: operation())
            if n > 0 {
                done += n
                deadline = nextDeadline()
            } else {
                try wait(for: Int16(POLLOUT), deadline: deadline, operation: operation())
            }
        }
    }

    public func receiveAll(_ p: UnsafeMutableRawPointer, _ count: Int, operation: @autoclosure () -> String) throws {
        var done = 0
        var deadline = nextDeadline()
        while done < count {
            let n = try tryReceive(p + done, count - done, expected: count, received: done, operation: operation())
            if n > 0 {
                done += n
                deadline = nextDeadline()
            } else {
                try wait(for: Int16(POLLIN), deadline: deadline, operation: operation())
            }
        }
    }

    // MARK: frames

    /// The MAC tag of the next frame sent (authenticated connections only).
    func nextSendTag(header: UnsafeRawBufferPointer, payload: UnsafeRawBufferPointer) -> (UInt64, UInt64) {
        sendingMAC!.next(header: header, payload: payload)
    }

    /// Checks a received frame's MAC tag; a mismatch closes the connection.
    func verifyReceivedTag(_ tag: (UInt64, UInt64), header: FrameHeader, payload: UnsafeRawBufferPointer,
                           operation: @autoclosure () -> String) throws {
        var bytes = HeaderBytes()
        bytes.withMutableBytes { header.encode(into: $0.baseAddress!) }
        let expected = bytes.withMutableBytes { receivingMAC!.next(header: UnsafeRawBufferPointer($0), payload: payload) }
        guard expected == tag else {
            close()
            throw TransportError(.badFrame("authentication tag mismatch (\(header.length) bytes): the frame was altered, replayed or reordered on the way"),
                                 operation: operation(), peer: peer)
        }
    }

    /// A frame whose authentication flag does not match this connection's mode is refused.
    func checkAuthentication(_ header: FrameHeader, operation: @autoclosure () -> String) throws {
        guard header.authenticated != authenticatesFrames else { return }
        close()
        throw TransportError(.badFrame(header.authenticated ? "an authenticated frame on a connection without frame authentication"
                                                            : "a frame without its authentication tag (authentication is on)"),
                             operation: operation(), peer: peer)
    }

    /// Sends one frame: header, then the payload straight from the caller's memory (then its MAC tag
    /// on authenticated connections).
    public func sendFrame(_ type: FrameHeader.MessageType, tag: UInt32, payload: UnsafeRawBufferPointer,
                          checksummed: Bool = true, operation: @autoclosure () -> String) throws {
        let header = FrameHeader(type: type, tag: tag, length: payload.count,
                                 payloadChecksum: checksummed ? checksum(payload) : nil, authenticated: authenticatesFrames)
        var bytes = header.encoded()
        try bytes.withUnsafeMutableBytes { try sendAll($0.baseAddress!, FrameHeader.size, operation: operation()) }
        if payload.count > 0 { try sendAll(payload.baseAddress!, payload.count, operation: operation()) }
        if authenticatesFrames {
            var mac = bytes.withUnsafeBytes { nextSendTag(header: $0, payload: payload) }
            try withUnsafeBytes(of: &mac) { try sendAll($0.baseAddress!, FrameMAC.tagBytes, operation: operation()) }
        }
    }

    public func sendFrame(_ type: FrameHeader.MessageType, tag: UInt32, bytes: [UInt8], operation: @autoclosure () -> String) throws {
        try bytes.withUnsafeBytes { try sendFrame(type, tag: tag, payload: $0, operation: operation()) }
    }

    /// Receives and checks one header; a frame of another type or tag, or one that fails a check,
    /// closes the connection and throws badFrame.
    public func receiveHeader(expecting type: FrameHeader.MessageType, tag: UInt32?, maxLength: Int,
                              operation: @autoclosure () -> String) throws -> FrameHeader {
        var raw = [UInt8](repeating: 0, count: FrameHeader.size)
        try raw.withUnsafeMutableBytes { try receiveAll($0.baseAddress!, FrameHeader.size, operation: operation()) }
        let decoded = raw.withUnsafeBytes { FrameHeader.decode($0.baseAddress!, maxLength: maxLength) }
        switch decoded {
        case .failure(let error):
            close()
            throw TransportError(.badFrame(error.reason), operation: operation(), peer: peer)
        case .success(let header):
            if header.type == .refusal && type != .refusal && !authenticatesFrames {
                var reason = [UInt8](repeating: 0, count: min(header.length, 4096))
                if header.length <= 4096 {
                    try? reason.withUnsafeMutableBytes { if $0.count > 0 { try receiveAll($0.baseAddress!, $0.count, operation: operation()) } }
                }
                close()
                throw TransportError(.refused(String(decoding: reason, as: UTF8.self)), operation: operation(), peer: peer)
            }
            try checkAuthentication(header, operation: operation())
            guard header.type == type else {
                close()
                throw TransportError(.badFrame("expected a \(type) frame, got \(header.type)"), operation: operation(), peer: peer)
            }
            if let tag, header.tag != tag {
                close()
                throw TransportError(.badFrame("expected tag \(tag), got \(header.tag) (ranks out of step)"), operation: operation(), peer: peer)
            }
            return header
        }
    }

    /// Receives one whole control frame (bounded) and verifies its payload checksum (and its MAC tag).
    public func receiveFrame(expecting type: FrameHeader.MessageType, tag: UInt32?, maxLength: Int = 1 << 20,
                             operation: @autoclosure () -> String) throws -> [UInt8] {
        let header = try receiveHeader(expecting: type, tag: tag, maxLength: maxLength, operation: operation())
        var payload = [UInt8](repeating: 0, count: header.length)
        try payload.withUnsafeMutableBytes { if header.length > 0 { try receiveAll($0.baseAddress!, header.length, operation: operation()) } }
        try verifyPayload(header, payload.withUnsafeBytes { checksum($0) }, operation: operation())
        if authenticatesFrames {
            var mac: (UInt64, UInt64) = (0, 0)
            try withUnsafeMutableBytes(of: &mac) { try receiveAll($0.baseAddress!, FrameMAC.tagBytes, operation: operation()) }
            try payload.withUnsafeBytes { try verifyReceivedTag(mac, header: header, payload: $0, operation: operation()) }
        }
        return payload
    }

    public func verifyPayload(_ header: FrameHeader, _ computed: UInt32, operation: @autoclosure () -> String) throws {
        if let expected = header.payloadChecksum, expected != computed {
            close()
            throw TransportError(.badFrame("payload checksum mismatch (\(header.length) bytes)"), operation: operation(), peer: peer)
        }
    }
}
