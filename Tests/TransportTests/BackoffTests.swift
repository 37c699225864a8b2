import Transport
import XCTest

final class BackoffTests: XCTestCase {
    /// Each wait sleeps the current pause and grows it by the factor (truncated to whole microseconds, as
    /// the integer `* 3 / 2` it replaced), never past the cap; reset starts again from the first pause.
    func testPausesGrowToTheCapAndResetStartsOver() {
        var doubling = Backoff(first: 1, growth: 2, cap: 8)
        var seen: [useconds_t] = []
        for _ in 0..<5 { seen.append(doubling.pause); doubling.wait() }
        XCTAssertEqual(seen, [1, 2, 4, 8, 8])
        doubling.reset()
        XCTAssertEqual(doubling.pause, 1)

        var halfAgain = Backoff(first: 25, growth: 1.5, cap: 100)
        seen = []
        for _ in 0..<5 { seen.append(halfAgain.pause); halfAgain.wait() }
        XCTAssertEqual(seen, [25, 37, 55, 82, 100])
    }
}
