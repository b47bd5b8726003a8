# FindTensorRT: the TensorRT headers, their version, and libnvinfer.
#
#   list(APPEND CMAKE_MODULE_PATH <this folder>)
#   find_package(TensorRT)            # or find_package(TensorRT REQUIRED)
#
# Looks under TensorRT_ROOT (CMake variable, else the environment variable), $TENSORRT_ROOT and
# $DEBERTRT_TRT_INCLUDE (an include directory). Sets
#   TensorRT_FOUND             the headers (NvInferRuntime.h) were found
#   TensorRT_INCLUDE_DIR       their directory
#   TensorRT_VERSION           MAJOR.MINOR.PATCH from NvInferVersion.h ("unknown" without it)
#   TensorRT_nvinfer_LIBRARY   libnvinfer, or TensorRT_nvinfer_LIBRARY-NOTFOUND (headers alone compile plugins)
# Used by plugins/CMakeLists.txt and runtime/cpp/CMakeLists.txt (both ship in the Python package, where
# this file is debertrt/plugins/cmake/, as it is plugins/cmake/ in a checkout).
if(NOT TensorRT_ROOT AND DEFINED ENV{TensorRT_ROOT})
  set(TensorRT_ROOT "$ENV{TensorRT_ROOT}")
endif()

find_path(TensorRT_INCLUDE_DIR NvInferRuntime.h
  HINTS ${TensorRT_ROOT} $ENV{TENSORRT_ROOT} $ENV{DEBERTRT_TRT_INCLUDE}
  PATH_SUFFIXES include include/x86_64-linux-gnu include/aarch64-linux-gnu)

set(TensorRT_VERSION "unknown")
if(TensorRT_INCLUDE_DIR AND EXISTS ${TensorRT_INCLUDE_DIR}/NvInferVersion.h)
  # TensorRT 10 defines NV_TENSORRT_MAJOR ...; 11 defines TRT_MAJOR_ENTERPRISE ... and aliases.
  file(STRINGS ${TensorRT_INCLUDE_DIR}/NvInferVersion.h _trt_version_lines
    REGEX "#define (NV_TENSORRT|TRT)_(MAJOR|MINOR|PATCH)(_ENTERPRISE)? +[0-9]+")
  foreach(_part MAJOR MINOR PATCH)
    set(_trt_${_part} "")
    foreach(_line ${_trt_version_lines})
      if(_line MATCHES "_${_part}(_ENTERPRISE)? +([0-9]+)")
        set(_trt_${_part} ${CMAKE_MATCH_2})
      endif()
    endforeach()
  endforeach()
  set(TensorRT_VERSION "${_trt_MAJOR}.${_trt_MINOR}.${_trt_PATCH}")
endif()

if(TensorRT_INCLUDE_DIR)
  find_library(TensorRT_nvinfer_LIBRARY
    NAMES nvinfer nvinfer_11 nvinfer_10 libnvinfer.so.11 libnvinfer.so.10
    HINTS ${TensorRT_ROOT} $ENV{TENSORRT_ROOT} ${TensorRT_INCLUDE_DIR}/..
    PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu lib/aarch64-linux-gnu)
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(TensorRT REQUIRED_VARS TensorRT_INCLUDE_DIR VERSION_VAR TensorRT_VERSION)
