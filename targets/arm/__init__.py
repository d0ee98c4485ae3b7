"""ARM (aarch64) targets: cross-compilation (:mod:`.builder`), the LLVM codegen guard for cross targets (:mod:`.codegen_guard`) and running aarch64 libraries under qemu (:mod:`.emulate`)."""
