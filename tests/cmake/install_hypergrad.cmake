# cmake -P script: configures hypergrad alone (tests, benchmarks, examples off), builds it and
# installs it into a fresh prefix, as a packager would. Fixture setup for the find_package test.
#
#   cmake -DSOURCE_DIR=<hypergrad> -DBINARY_DIR=<scratch> -DPREFIX=<install prefix>
#         [-DGENERATOR=<name>] [-DCXX_COMPILER=<path>] [-DBUILD_TYPE=<type>] [-DEIGEN3_DIR=<dir>]
#         -P install_hypergrad.cmake
cmake_minimum_required(VERSION 3.16)

foreach(var SOURCE_DIR BINARY_DIR PREFIX)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "install_hypergrad.cmake: -D${var}=... is required")
  endif()
endforeach()

# Start clean so a header deleted from the sources cannot survive in the prefix.
file(REMOVE_RECURSE "${BINARY_DIR}" "${PREFIX}")

set(configure_args -S "${SOURCE_DIR}" -B "${BINARY_DIR}" "-DCMAKE_INSTALL_PREFIX=${PREFIX}"
    -DHYPERGRAD_BUILD_TESTS=OFF -DHYPERGRAD_BUILD_BENCHMARKS=OFF -DHYPERGRAD_BUILD_EXAMPLES=OFF
    -DHYPERGRAD_INSTALL=ON)
if(GENERATOR)
  list(APPEND configure_args -G "${GENERATOR}")
endif()
if(CXX_COMPILER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(BUILD_TYPE)
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
endif()
if(EIGEN3_DIR)
  list(APPEND configure_args "-DEigen3_DIR=${EIGEN3_DIR}")
endif()

function(run_step what)
  message(STATUS "install_hypergrad: ${what}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "install_hypergrad: ${what} failed (${result})")
  endif()
endfunction()

run_step("configure" "${CMAKE_COMMAND}" ${configure_args})
run_step("build" "${CMAKE_COMMAND}" --build "${BINARY_DIR}")
run_step("install" "${CMAKE_COMMAND}" --install "${BINARY_DIR}")

# The package must carry what the README promises.
foreach(file include/hypergrad.hpp include/hypergrad/exact.hpp share/cmake/hypergrad/hypergradConfig.cmake
             share/cmake/hypergrad/hypergradConfigVersion.cmake share/cmake/hypergrad/hypergradTargets.cmake)
  if(NOT EXISTS "${PREFIX}/${file}")
    message(FATAL_ERROR "install_hypergrad: ${PREFIX}/${file} was not installed")
  endif()
endforeach()
