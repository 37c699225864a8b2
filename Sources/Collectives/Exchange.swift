import Rendezvous
import Transport
#if canImport(Glibc)
import Glibc
#endif


/// The bytes of elements `range` of a float buffer.
@inline(__always) func bytesOf(_ buffer: UnsafeMutableBufferPointer<Float>, _ range: Range<Int>) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(mutableBytesOf(buffer, range))
}

@inline(__always) func mutableBytesOf(_ buffer: UnsafeMutableBufferPointer<Float>, _ range: Range<Int>) -> UnsafeMutableRawBufferPointer {
    precondition(range.lowerBound >= 0 && range.upperBound <= buffer.count, "range \(range) outside buffer of \(buffer.count)")
    return UnsafeMutableRawBufferPointer(start: range.isEmpty ? nil : buffer.baseAddress! + range.lowerBound, count: range.count * 4)
}

/// The chunk boundaries both sides of a transfer compute identically: `total` bytes cut into frames
/// of at most `chunk` bytes.
@inline(__always) func chunkCount(_ total: Int, _ chunk: Int) -> Int { total == 0 ? 0 : (total + chunk - 1) / chunk }

/// Sends `sendBytes` to one peer and receives `receiveBuffer.count` bytes from another (or the same)
/// peer at the same time on non-blocking sockets, one poll for both, as data frames of at most
/// `chunkBytes`. `onChunk(range)` runs as soon as each received chunk has landed (and passed its
/// checks), so reduction overlaps the transfer. Fails when no byte moves for the group's timeout.
func exchange(_ group: ProcessGroup, tag: UInt32, sendTo: Int?, sendBytes: UnsafeRawBufferPointer,
              receiveFrom: Int?, receiveBuffer: UnsafeMutableRawBufferPointer,
              operation: @autoclosure () -> String, onChunk: (Range<Int>) -> Void = { _ in }) throws {
    let chunkBytes = group.chunkBytes
    let sender = sendTo.map { group.connection(to: $0) }
    let receiver = receiveFrom.map { group.connection(to: $0) }
    let sendTotal = sender == nil ? 0 : sendBytes.count
    let receiveTotal = receiver == nil ? 0 : receiveBuffer.count
    let sendChunks = chunkCount(sendTotal, chunkBytes), receiveChunks = chunkCount(receiveTotal, chunkBytes)

    // Send side: the current frame's header (encoded when the frame starts) and progress through it.
    var sendChunk = 0, sendOffset = 0 // offset within header + payload of the current frame
    var sendHeader = [UInt8](repeating: 0, count: FrameHeader.size)
    var sendChunkLength = 0
    func startSendFrame() {
        sendChunkLength = min(chunkBytes, sendTotal - sendChunk * chunkBytes)
        let payload = UnsafeRawBufferPointer(rebasing: sendBytes[(sendChunk * chunkBytes)..<(sendChunk * chunkBytes + sendChunkLength)])
        let header = FrameHeader(type: .data, tag: tag, length: sendChunkLength,
                                 payloadChecksum: group.checksumPayloads ? checksum(payload) : nil)
        sendHeader.withUnsafeMutableBytes { header.encode(into: $0.baseAddress!) }
        sendOffset = 0
    }
    if sendChunks > 0 { startSendFrame() }

    // Receive side: header bytes first, then the payload straight into the destination.
    var receiveChunk = 0, receiveOffset = 0
    var receiveHeader = [UInt8](repeating: 0, count: FrameHeader.size)
    var receivingPayload = false
    var receivedHeader = FrameHeader(type: .data, tag: 0, length: 0)

    var deadline = Deadline(seconds: group.policy.timeoutSeconds)
    var spinStart = Deadline.now()
    while sendChunk < sendChunks || receiveChunk < receiveChunks {
        var progressed = false
        // Push as much as the socket takes.
        while let s = sender, sendChunk < sendChunks {
            let n: Int
            if sendOffset < FrameHeader.size {
                // Header and payload leave in one sendmsg, the payload straight from the caller's memory.
                let payload = UnsafeRawBufferPointer(start: sendBytes.baseAddress.map { $0 + sendChunk * chunkBytes }, count: sendChunkLength)
                n = try sendHeader.withUnsafeBytes {
                    try s.trySend(UnsafeRawBufferPointer(rebasing: $0[sendOffset...]), payload, operation: operation())
                }
            } else {
                let start = sendChunk * chunkBytes + sendOffset - FrameHeader.size
                n = try s.trySend(sendBytes.baseAddress! + start, sendChunkLength - (sendOffset - FrameHeader.size), operation: operation())
            }
            if n == 0 { break }
            progressed = true
            sendOffset += n
            if sendOffset == FrameHeader.size + sendChunkLength {
                sendChunk += 1
                if sendChunk < sendChunks { startSendFrame() }
            }
        }
        // Pull what has arrived.
        while let r = receiver, receiveChunk < receiveChunks {
            let expectedLength = min(chunkBytes, receiveTotal - receiveChunk * chunkBytes)
            let base = receiveChunk * chunkBytes
            let n: Int
            if !receivingPayload {
                n = try receiveHeader.withUnsafeMutableBytes {
                    try r.tryReceive($0.baseAddress! + receiveOffset, FrameHeader.size - receiveOffset,
                                     expected: receiveTotal, received: base, operation: operation())
                }
            } else {
                n = try r.tryReceive(receiveBuffer.baseAddress! + base + receiveOffset, expectedLength - receiveOffset,
                                     expected: receiveTotal, received: base + receiveOffset, operation: operation())
            }
            if n == 0 { break }
            progressed = true
            receiveOffset += n
            if !receivingPayload && receiveOffset == FrameHeader.size {
                switch receiveHeader.withUnsafeBytes({ FrameHeader.decode($0.baseAddress!, maxLength: chunkBytes) }) {
                case .failure(let error):
                    r.close()
                    throw TransportError(.badFrame(error.reason), operation: operation(), peer: r.peer)
                case .success(let header):
                    guard header.type == .data, header.tag == tag, header.length == expectedLength else {
                        r.close()
                        throw TransportError(.badFrame("expected data frame tag \(tag) of \(expectedLength) bytes, got \(header.type) tag \(header.tag) of \(header.length) bytes (ranks out of step?)"),
                                             operation: operation(), peer: r.peer)
                    }
                    receivedHeader = header
                }
                receivingPayload = true
                receiveOffset = 0
            }
            if receivingPayload && receiveOffset == expectedLength {
                let range = base..<(base + expectedLength)
                if receivedHeader.payloadChecksum != nil {
                    try r.verifyPayload(receivedHeader, checksum(UnsafeRawBufferPointer(rebasing: receiveBuffer[range])), operation: operation())
                }
                onChunk(range)
                receiveChunk += 1
                receivingPayload = false
                receiveOffset = 0
            }
        }
        if progressed {
            deadline = Deadline(seconds: group.policy.timeoutSeconds)
            spinStart = Deadline.now()
            continue
        }
        if sendChunk >= sendChunks && receiveChunk >= receiveChunks { break }
        try waitForEither(sender: sendChunk < sendChunks ? sender : nil, receiver: receiveChunk < receiveChunks ? receiver : nil,
                          spinning: Deadline.now() - spinStart < group.policy.spinMicroseconds * 1e-6,
                          deadline: deadline, operation: operation())
    }
}

/// One poll over the pending directions; returns at once while spinning, else blocks (bounded by the
/// deadline). Throws timedOut naming the peer we were waiting for.
private func waitForEither(sender: Connection?, receiver: Connection?, spinning: Bool, deadline: Deadline,
                           operation: @autoclosure () -> String) throws {
    var fds: [pollfd] = []
    if let s = sender { fds.append(pollfd(fd: s.fd, events: Int16(POLLOUT), revents: 0)) }
    if let r = receiver {
        if let i = fds.firstIndex(where: { $0.fd == r.fd }) { fds[i].events |= Int16(POLLIN) }
        else { fds.append(pollfd(fd: r.fd, events: Int16(POLLIN), revents: 0)) }
    }
    if spinning {
        _ = poll(&fds, nfds_t(fds.count), 0)
        return
    }
    if deadline.hasPassed {
        let who = receiver ?? sender
        throw TransportError(.timedOut(seconds: deadline.seconds), operation: operation(), peer: who?.peer)
    }
    let ready = poll(&fds, nfds_t(fds.count), min(deadline.pollMilliseconds, 1000))
    if ready < 0 && errno != EINTR {
        throw TransportError(.system(call: "poll", errno: errno), operation: operation(), peer: (receiver ?? sender)?.peer)
    }
}
