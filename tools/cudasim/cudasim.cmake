# Tests only (-DGRADFAST_CUDA_SIM=ON, driven by tools/cudasim/build.py): csrc/cuda compiled
# by the host compiler against tools/cudasim's runtime, into the same _C module as the CPU
# kernels, so the CUDA entry points run on the CPU where no GPU is.
set(GF_SIM_DIR ${CMAKE_CURRENT_LIST_DIR})
file(GLOB GF_SIM_CU CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/csrc/cuda/*.cu)
set(GF_SIM_SOURCES ${GF_SIM_DIR}/runtime.cpp ${GF_SIM_DIR}/block.cpp ${GF_SIM_DIR}/fiber.cpp)
foreach(cu ${GF_SIM_CU})
  get_filename_component(name ${cu} NAME_WE)
  set(out ${CMAKE_BINARY_DIR}/cudasim/${name}.cpp)
  add_custom_command(OUTPUT ${out}
    COMMAND ${Python_EXECUTABLE} ${GF_SIM_DIR}/rewrite_launches.py ${cu} ${out}
    DEPENDS ${cu} ${GF_SIM_DIR}/rewrite_launches.py VERBATIM)
  list(APPEND GF_SIM_SOURCES ${out})
endforeach()
file(GLOB GF_SIM_HEADERS CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/csrc/cuda/*.cuh
     ${PROJECT_SOURCE_DIR}/csrc/cuda/*.h ${GF_SIM_DIR}/include/*.h)

add_library(gf_cudasim OBJECT ${GF_SIM_SOURCES})
target_include_directories(gf_cudasim BEFORE PRIVATE ${GF_SIM_DIR}/include ${GF_SIM_DIR}
                           ${PROJECT_SOURCE_DIR}/csrc/cuda)
# As nvcc with --fmad=false (CMakeLists.txt): no implicit FMA contraction.
target_compile_options(gf_cudasim PRIVATE -O2 -g -Wall -Wno-unused-variable -ffp-contract=off)
target_compile_definitions(gf_cudasim PRIVATE GRADFAST_WITH_CUDA GRADFAST_CUDA_SIM
                           GRADFAST_CUDA_ARCHS_STR="cudasim")
if(GRADFAST_CUDA_SIM_SANITIZE)
  # e.g. address,undefined: out-of-bounds accesses of the kernels, as compute-sanitizer's
  # memcheck would report them (load the module with the sanitizer's runtime preloaded).
  target_compile_options(gf_cudasim PRIVATE -fsanitize=${GRADFAST_CUDA_SIM_SANITIZE}
                         -fno-omit-frame-pointer)
  target_link_options(_C PRIVATE -fsanitize=${GRADFAST_CUDA_SIM_SANITIZE})
endif()
target_sources(_C PRIVATE $<TARGET_OBJECTS:gf_cudasim>)
target_compile_definitions(_C PRIVATE GRADFAST_WITH_CUDA GRADFAST_CUDA_SIM)
