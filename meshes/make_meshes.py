"""Regenerate the ready parameter-space meshes shipped in meshes/.

Each mesh is made by a generator of :mod:`flowfem.space` and written with
``MeshArrays.write`` (meshio: gmsh 4.1 ``.msh`` or XML ``.xdmf``), so any of
them loads with ``Space.read(path)`` or ``flowfem ... --domain meshes/NAME``:

    .venv/bin/python meshes/make_meshes.py            # into meshes/
    .venv/bin/python meshes/make_meshes.py --out DIR  # elsewhere

The ball meshes come from gmsh: another gmsh version may place their nodes
differently, which changes the files but not what they are.
"""

from __future__ import annotations

import argparse
import os

from flowfem.space import ball_arrays, box_arrays, circle_arrays, sphere_arrays

HERE = os.path.dirname(os.path.abspath(__file__))

# file name -> (what it is, how to make it)
MESHES = {
    "box_d1_R4_n32.msh": ("square [-4, 4]^2, 32 x 32 x 2 triangles (d = 1)",
                          lambda: box_arrays(1, 32, 4.0)),
    "ball_d1_R4.msh": ("disc |theta| <= 4, gmsh element size 0.25 (d = 1)",
                       lambda: ball_arrays(1, 0.25, 4.0)),
    "circle_64.xdmf": ("unit circle S^1, 64 curved (degree-2) arcs (d = 1, homogeneous sigma)",
                       lambda: circle_arrays(64, 2)),
    "box_d2_R3_n8.xdmf": ("cube [-3, 3]^3, 8^3 x 6 tetrahedra (d = 2)",
                          lambda: box_arrays(2, 8, 3.0)),
    "ball_d2_R3.msh": ("ball |theta| <= 3, gmsh element size 0.6 (d = 2)",
                       lambda: ball_arrays(2, 0.6, 3.0)),
    "sphere_r3.msh": ("unit sphere S^2, icosahedron refined 3 times: 1280 curved (degree-2) triangles "
                      "(d = 2, homogeneous sigma)", lambda: sphere_arrays(3, 2)),
}


def main(out: str = HERE) -> list[str]:
    """Write every mesh into ``out``; return the paths written."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for name, (what, make) in MESHES.items():
        path = os.path.join(out, name)
        arrays = make()
        arrays.write(path)
        print(f"{name:20s} {len(arrays.points):6d} nodes {len(arrays.cells):6d} cells "
              f"{os.path.getsize(path) / 1024:7.1f} KiB  {what}")
        paths.append(path)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=HERE, help="directory to write into (default: meshes/)")
    main(parser.parse_args().out)
