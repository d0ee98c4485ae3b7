"""FPGA-style fixed-point designs: the build (:mod:`.builder`), HLS C emission (:mod:`.hls_c`) and layer folding / resource estimates (:mod:`.folding`)."""
