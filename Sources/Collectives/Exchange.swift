import Rendezvous
import Transport

/// The bytes of elements `range` of a float buffer.
@inline(__always) func bytesOf(_ buffer: UnsafeMutableBufferPointer<Float>, _ range: Range<Int>) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(mutableBytesOf(buffer, range))
}

@inline(__always) func mutableBytesOf(_ buffer: UnsafeMutableBufferPointer<Float>, _ range: Range<Int>) -> UnsafeMutableRawBufferPointer {
    precondition(range.lowerBound >= 0 && range.upperBound <= buffer.count, "range \(range) outside buffer of \(buffer.count)")
    return UnsafeMutableRawBufferPointer(start: range.isEmpty ? nil : buffer.baseAddress! + range.lowerBound, count: range.count * 4)
}

/// One step of a collective: send `sendBytes` to group rank `sendTo` while receiving
/// `receiveBuffer.count` bytes from group rank `receiveFrom` (either may be nil), both at once through
/// Transport's duplex engine. `onChunk(range)` runs as each received chunk lands.
func exchange(_ group: ProcessGroup, tag: UInt32, sendTo: Int?, sendBytes: UnsafeRawBufferPointer,
              receiveFrom: Int?, receiveBuffer: UnsafeMutableRawBufferPointer,
              operation: @autoclosure () -> String, onChunk: (Range<Int>) -> Void = { _ in }) throws {
    // The two messages live on the stack: a small step is a microsecond, where allocations show.
    try withUnsafeTemporaryAllocation(of: OutgoingMessage.self, capacity: 1) { sending in
        try withUnsafeTemporaryAllocation(of: IncomingMessage.self, capacity: 1) { receiving in
            if let sendTo { sending.initializeElement(at: 0, to: OutgoingMessage(group.connection(to: sendTo), tag: tag, bytes: sendBytes)) }
            if let receiveFrom {
                receiving.initializeElement(at: 0, to: IncomingMessage(group.connection(to: receiveFrom), tag: tag, buffer: receiveBuffer))
            }
            let sends = UnsafeMutableBufferPointer(rebasing: sending[..<(sendTo == nil ? 0 : 1)])
            let receives = UnsafeMutableBufferPointer(rebasing: receiving[..<(receiveFrom == nil ? 0 : 1)])
            defer { sends.deinitialize(); receives.deinitialize() }
            try exchangeMessages(sending: UnsafeBufferPointer(sends), receiving: UnsafeBufferPointer(receives), settings: group.exchangeSettings,
                                 operation: operation(), onChunk: { _, range in onChunk(range) })
        }
    }
}
