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
    let sending = sendTo.map { [OutgoingMessage(group.connection(to: $0), tag: tag, bytes: sendBytes)] } ?? []
    let receiving = receiveFrom.map { [IncomingMessage(group.connection(to: $0), tag: tag, buffer: receiveBuffer)] } ?? []
    try exchangeMessages(sending: sending, receiving: receiving, settings: group.exchangeSettings,
                         operation: operation(), onChunk: { _, range in onChunk(range) })
}
