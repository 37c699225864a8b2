# Sourced by the scripts that run swift (they set $root). The Swift driver leaves a TemporaryDirectory.*
# in $TMPDIR at every invocation (swiftlang/swift-driver#2049: six a build, five a test run, never
# removed), so ours get a $TMPDIR inside .build, emptied of them after each command.
swift_in_build_tmp() {
  local dir="$root/.build/swift-tmp" status=0
  mkdir -p "$dir"
  TMPDIR="$dir" swift "$@" || status=$?
  rm -rf "$dir"/TemporaryDirectory.*
  return "$status"
}
