import Glibc
import CZlib

/// Reads a whole file, gunzipping it when it is gzip-compressed (zlib's gzread passes plain files through).
/// A missing file, a corrupt or truncated gzip stream are errors naming the path.
/// Data files are regular files (a FIFO would hang the reader, a device like /dev/zero never ends) and
/// decompress to at most this many bytes.
public let maxDataBytes = 1 << 30

public func readPossiblyGzippedFile(_ path: String, maxBytes: Int = maxDataBytes) throws -> [UInt8] {
    var info = stat()
    guard stat(path, &info) == 0 else { throw DatasetError(path, "cannot open (missing or unreadable)") }
    guard (info.st_mode & S_IFMT) == S_IFREG else { throw DatasetError(path, "is not a regular file") }
    guard let file = gzopen(path, "rb") else { throw DatasetError(path, "cannot open (missing or unreadable)") }
    defer { gzclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = chunk.withUnsafeMutableBytes { gzread(file, $0.baseAddress, UInt32($0.count)) }
        if n < 0 {
            var code: Int32 = 0
            let message = gzerror(file, &code).map { String(cString: $0) } ?? "unknown zlib error"
            throw DatasetError(path, "corrupt gzip data (\(message))")
        }
        if n == 0 { break }
        guard bytes.count + Int(n) <= maxBytes else { throw DatasetError(path, "holds more than \(maxBytes) bytes (decompressed): not a dataset of this project") }
        bytes.append(contentsOf: chunk[0..<Int(n)])
    }
    // gzread reports a stream cut short as a clean end; gzerror still knows.
    var code: Int32 = 0
    let message = gzerror(file, &code).map { String(cString: $0) } ?? ""
    if code != Z_OK && code != Z_STREAM_END {
        throw DatasetError(path, "truncated or corrupt gzip data (\(message))")
    }
    return bytes
}
