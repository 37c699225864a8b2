import CShims

/// The 24-byte header in front of every message on every connection (little-endian):
///   magic u32 "SDDP" | version u8 | type u8 | flags u16 | tag u32 | length u32 | payload CRC-32C u32 | header CRC-32C u32
/// The header CRC covers the first 20 bytes and is always checked; the payload CRC is checked when
/// flag bit 0 is set (control messages always; bulk gradient data when the group asks for it). Flag
/// bit 1: a 16-byte MAC tag (AES-GCM) follows the payload (authenticated connections, FrameAuthentication.swift).
/// Nothing in a frame is trusted before the header checks pass, and lengths are bounded by the receiver.
public struct FrameHeader: Sendable, Equatable {
    public static let magic: UInt32 = 0x5044_4453 // "SDDP" read as little-endian bytes
    public static let version: UInt8 = 1
    public static let size = 24
    /// No frame carries more than this (64 MiB): chunks and store values are far smaller.
    public static let maxLength = 64 << 20

    public enum MessageType: UInt8, Sendable, CaseIterable {
        case hello = 1, challenge = 2, proof = 3, welcome = 4, refusal = 5
        case storeRequest = 6, storeReply = 7
        case data = 8
        /// Point-to-point payload (tagged by the caller), kept apart from collective data.
        case message = 9
        /// Shared-memory set-up between two ranks of one host: the offer (host identity, segment name)
        /// and the answer (attached or not, and why).
        case laneOffer = 10, laneAnswer = 11
    }

    public var type: MessageType
    public var tag: UInt32
    public var length: Int
    public var payloadChecksum: UInt32?
    /// A MAC tag follows the payload.
    public var authenticated: Bool

    public init(type: MessageType, tag: UInt32, length: Int, payloadChecksum: UInt32? = nil, authenticated: Bool = false) {
        self.type = type; self.tag = tag; self.length = length; self.payloadChecksum = payloadChecksum
        self.authenticated = authenticated
    }

    public func encode(into p: UnsafeMutableRawPointer) {
        p.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: Self.version, toByteOffset: 4, as: UInt8.self)
        p.storeBytes(of: type.rawValue, toByteOffset: 5, as: UInt8.self)
        p.storeBytes(of: UInt16((payloadChecksum == nil ? 0 : 1) | (authenticated ? 2 : 0)).littleEndian, toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: tag.littleEndian, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: UInt32(length).littleEndian, toByteOffset: 12, as: UInt32.self)
        p.storeBytes(of: (payloadChecksum ?? 0).littleEndian, toByteOffset: 16, as: UInt32.self)
        p.storeBytes(of: ddp_crc32c(0, p, 20).littleEndian, toByteOffset: 20, as: UInt32.self)
    }

    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.withUnsafeMutableBytes { encode(into: $0.baseAddress!) }
        return bytes
    }

    /// Parses and checks a header; the reason string says which check failed.
    public static func decode(_ p: UnsafeRawPointer, maxLength: Int = FrameHeader.maxLength) -> Result<FrameHeader, FrameError> {
        let magic = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        guard magic == Self.magic else {
            return .failure(FrameError("bad magic 0x\(String(magic, radix: 16)) (not a swift-ddp peer?)"))
        }
        let storedCRC = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 20, as: UInt32.self))
        guard storedCRC == ddp_crc32c(0, p, 20) else { return .failure(FrameError("header checksum mismatch")) }
        let version = p.load(fromByteOffset: 4, as: UInt8.self)
        guard version == Self.version else {
            return .failure(FrameError("protocol version \(version), this build speaks \(Self.version)"))
        }
        guard let type = MessageType(rawValue: p.load(fromByteOffset: 5, as: UInt8.self)) else {
            return .failure(FrameError("unknown message type \(p.load(fromByteOffset: 5, as: UInt8.self))"))
        }
        let flags = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
        guard flags & ~3 == 0 else { return .failure(FrameError("unknown flags 0x\(String(flags, radix: 16))")) }
        let length = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
        guard length <= maxLength else { return .failure(FrameError("length \(length) exceeds the limit of \(maxLength) bytes")) }
        let tag = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        let payloadCRC = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
        guard flags & 1 == 1 || payloadCRC == 0 else { return .failure(FrameError("payload checksum set without its flag")) }
        return .success(FrameHeader(type: type, tag: tag, length: length, payloadChecksum: flags & 1 == 1 ? payloadCRC : nil,
                                    authenticated: flags & 2 == 2))
    }
}

public struct FrameError: Error, Sendable, Equatable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// CRC-32C of a byte range (hardware instruction when available).
public func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
    guard let base = bytes.baseAddress, bytes.count > 0 else { return 0 }
    return ddp_crc32c(0, base, bytes.count)
}
