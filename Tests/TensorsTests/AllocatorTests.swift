import Glibc
import Tensors
import XCTest

final class AllocatorTests: XCTestCase {
    /// Resident bytes of this process now (/proc/self/statm's second field, in pages).
    private func residentBytes() throws -> Int {
        let text = try String(contentsOfFile: "/proc/self/statm", encoding: .utf8)
        let fields = text.split(separator: " ")
        return try XCTUnwrap(Int(fields[1])) * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// The checkpoint assembly's pattern: a large block freed, then a smaller one allocated, written and
    /// freed. With the threshold fixed the second block is mapped and unmapped, so nothing stays
    /// resident; glibc's moving threshold would take it from the heap and keep its 12 MiB.
    func testFreedLargeBuffersLeaveNothingResident() throws {
        fixAllocatorThresholds()
        try XCTSkipIf(getenv("MALLOC_MMAP_THRESHOLD_") != nil, "the user's threshold is left as set")
        do { let first = FloatBuffer(count: 4 << 20); XCTAssertEqual(first.base[first.count - 1], 0) }
        let before = try residentBytes()
        do {
            let second = FloatBuffer(count: 3 << 20)
            second.buffer.update(repeating: 1)
            XCTAssertGreaterThanOrEqual(try residentBytes() - before, 11 << 20, "the 12 MiB buffer is resident while alive")
        }
        XCTAssertLessThan(try residentBytes() - before, 2 << 20, "the freed 12 MiB went back to the kernel")
    }
}
