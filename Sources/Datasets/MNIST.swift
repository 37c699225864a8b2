/// MNIST in the idx format (raw or gzip): images [count, rows*cols] scaled to [0, 1], labels 0...9.
/// Validates magic numbers, dimensions, counts and file sizes; every problem names the file.
public struct MNIST: Sendable {
    public let images: [Float]
    public let labels: [Int32]
    public let pixelsPerImage: Int
    public var count: Int { labels.count }

    public init(images: [Float], labels: [Int32], pixelsPerImage: Int) {
        precondition(images.count == labels.count * pixelsPerImage, "MNIST images/labels mismatch")
        self.images = images; self.labels = labels; self.pixelsPerImage = pixelsPerImage
    }

    public init(imagesPath: String, labelsPath: String) throws {
        let imageBytes = try readPossiblyGzippedFile(imagesPath)
        let labelBytes = try readPossiblyGzippedFile(labelsPath)
        let (imageCount, pixels) = try Self.checkImages(imageBytes, path: imagesPath)
        let labelCount = try Self.checkLabels(labelBytes, path: labelsPath)
        guard imageCount == labelCount else {
            throw DatasetError(labelsPath, "holds \(labelCount) labels but \(imagesPath) holds \(imageCount) images")
        }
        images = imageBytes[16...].map { Float($0) / 255 }
        labels = labelBytes[8...].map { Int32($0) }
        pixelsPerImage = pixels
    }

    /// The first `count` examples and the rest (the 10k set splits 8,000 / 2,000).
    public func split(at count: Int) -> (MNIST, MNIST) {
        precondition(count >= 0 && count <= self.count, "split point \(count) outside 0...\(self.count)")
        let cut = count * pixelsPerImage
        return (MNIST(images: Array(images[..<cut]), labels: Array(labels[..<count]), pixelsPerImage: pixelsPerImage),
                MNIST(images: Array(images[cut...]), labels: Array(labels[count...]), pixelsPerImage: pixelsPerImage))
    }

    /// Writes the images at `indices` as rows of `features` (indices.count x pixelsPerImage floats).
    public func writeImages(_ indices: ArraySlice<Int>, into features: UnsafeMutablePointer<Float>) {
        images.withUnsafeBufferPointer { src in
            for (row, i) in indices.enumerated() {
                (features + row * pixelsPerImage).update(from: src.baseAddress! + i * pixelsPerImage, count: pixelsPerImage)
            }
        }
    }

    /// Examples at `indices`, as a flat feature matrix and labels.
    public func gather(_ indices: ArraySlice<Int>) -> (features: [Float], labels: [Int32]) {
        let features = [Float](unsafeUninitializedCapacity: indices.count * pixelsPerImage) { buffer, count in
            writeImages(indices, into: buffer.baseAddress!)
            count = indices.count * pixelsPerImage
        }
        return (features, indices.map { labels[$0] })
    }

    static func bigEndian32(_ bytes: [UInt8], _ at: Int) -> Int {
        Int(bytes[at]) << 24 | Int(bytes[at + 1]) << 16 | Int(bytes[at + 2]) << 8 | Int(bytes[at + 3])
    }

    static func checkImages(_ bytes: [UInt8], path: String) throws -> (count: Int, pixels: Int) {
        guard bytes.count >= 16 else { throw DatasetError(path, "too short for an idx3 header (\(bytes.count) bytes)") }
        let magic = bigEndian32(bytes, 0)
        guard magic == 0x0803 else {
            throw DatasetError(path, "bad magic number 0x\(String(magic, radix: 16)) (expected 0x803, idx3 unsigned bytes)")
        }
        let n = bigEndian32(bytes, 4), rows = bigEndian32(bytes, 8), cols = bigEndian32(bytes, 12)
        guard rows > 0, cols > 0, rows <= 1024, cols <= 1024 else { throw DatasetError(path, "implausible image size \(rows)x\(cols)") }
        let expected = 16 + n * rows * cols
        guard bytes.count == expected else {
            throw DatasetError(path, "header says \(n) images of \(rows)x\(cols) (\(expected) bytes) but the data has \(bytes.count) bytes")
        }
        return (n, rows * cols)
    }

    static func checkLabels(_ bytes: [UInt8], path: String) throws -> Int {
        guard bytes.count >= 8 else { throw DatasetError(path, "too short for an idx1 header (\(bytes.count) bytes)") }
        let magic = bigEndian32(bytes, 0)
        guard magic == 0x0801 else {
            throw DatasetError(path, "bad magic number 0x\(String(magic, radix: 16)) (expected 0x801, idx1 unsigned bytes)")
        }
        let n = bigEndian32(bytes, 4)
        guard bytes.count == 8 + n else {
            throw DatasetError(path, "header says \(n) labels but the data has \(bytes.count - 8)")
        }
        if let bad = bytes[8...].firstIndex(where: { $0 > 9 }) {
            throw DatasetError(path, "label \(bytes[bad]) at index \(bad - 8) is not a digit 0-9")
        }
        return n
    }
}
