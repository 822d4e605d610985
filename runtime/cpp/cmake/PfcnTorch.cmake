# pfcn_torch: the libtorch of an installed torch wheel (or a libtorch download) as one imported target.
#
# Point CMake at torch the usual way: -DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')"
# (or -DTorch_DIR=.../share/cmake/Torch, or -DPFCN_TORCH_ROOT=<the torch package folder>).
#
# Why not plain find_package(Torch): the CUDA wheels' TorchConfig.cmake stops with a fatal error when no CUDA
# toolkit is installed, although running a package needs none (the wheel's libraries bring their CUDA runtime).
# PFCN_USE_TORCH_CONFIG=ON uses find_package(Torch) anyway (CPU libtorch, or a machine with the toolkit).
option(PFCN_USE_TORCH_CONFIG "use find_package(Torch) instead of the wheel's headers and libraries directly" OFF)

if(PFCN_USE_TORCH_CONFIG)
  find_package(Torch REQUIRED)
  add_library(pfcn_torch INTERFACE)
  target_link_libraries(pfcn_torch INTERFACE ${TORCH_LIBRARIES})
  return()
endif()

if(NOT PFCN_TORCH_ROOT)
  find_file(_pfcn_torch_config TorchConfig.cmake
            PATH_SUFFIXES Torch share/cmake/Torch
            HINTS ${Torch_DIR} ${CMAKE_PREFIX_PATH}
            NO_CACHE)
  if(NOT _pfcn_torch_config)
    message(FATAL_ERROR
      "pfcn: libtorch not found. Pass -DCMAKE_PREFIX_PATH=\"$(python -c 'import torch; "
      "print(torch.utils.cmake_prefix_path)')\" or -DPFCN_TORCH_ROOT=<torch package folder>")
  endif()
  get_filename_component(_pfcn_torch_dir "${_pfcn_torch_config}" DIRECTORY)
  get_filename_component(PFCN_TORCH_ROOT "${_pfcn_torch_dir}/../../.." ABSOLUTE)
endif()

find_library(PFCN_LIBTORCH torch PATHS "${PFCN_TORCH_ROOT}/lib" NO_DEFAULT_PATH REQUIRED)
find_library(PFCN_LIBTORCH_CPU torch_cpu PATHS "${PFCN_TORCH_ROOT}/lib" NO_DEFAULT_PATH REQUIRED)
find_library(PFCN_LIBC10 c10 PATHS "${PFCN_TORCH_ROOT}/lib" NO_DEFAULT_PATH REQUIRED)
if(NOT EXISTS "${PFCN_TORCH_ROOT}/include/torch/csrc/inductor/aoti_package/model_package_loader.h")
  message(FATAL_ERROR "pfcn: ${PFCN_TORCH_ROOT} has no AOTInductor package loader header; torch >= 2.6 is needed")
endif()

add_library(pfcn_torch INTERFACE)
target_include_directories(pfcn_torch SYSTEM INTERFACE
  "${PFCN_TORCH_ROOT}/include" "${PFCN_TORCH_ROOT}/include/torch/csrc/api/include")
# libtorch.so pulls in libtorch_cuda.so in CUDA builds, so a CUDA package runs without extra flags.
target_link_libraries(pfcn_torch INTERFACE "${PFCN_LIBTORCH}" "${PFCN_LIBTORCH_CPU}" "${PFCN_LIBC10}")
message(STATUS "pfcn: libtorch from ${PFCN_TORCH_ROOT}")
