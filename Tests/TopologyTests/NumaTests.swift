import Topology
import XCTest
import Glibc

final class NumaTests: XCTestCase {
    /// numa_available() answers through the linked libnuma; on a Linux machine with /sys/devices/system/node
    /// it must say yes (this project's machines have one node).
    func testNumaAvailableAgreesWithSysfs() {
        let sysfsHasNodes = access("/sys/devices/system/node/node0", F_OK) == 0
        XCTAssertEqual(numaIsAvailable(), sysfsHasNodes)
    }
}
