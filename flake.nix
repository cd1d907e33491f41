{
  description = "musicgen-lora: reproducible LoRA fine-tuning of MusicGen";

  # Nix provides the interpreter, uv and the system audio libraries; uv.lock stays the single
  # source of Python packages, so `nix develop` installs the very wheels every other machine does.
  inputs.nixpkgs.url = "github:nixos/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      # No x86_64-darwin: torch publishes no wheels for Intel Macs any more, so uv.lock cannot
      # be installed there.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "aarch64-darwin"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      devShells = forAllSystems (
        pkgs:
        let
          # Same minor version as .python-version and requires-python in pyproject.toml.
          python = pkgs.python311;
          # Only what manylinux wheels expect from the host. Never glibc (the interpreter brings
          # its own) and never CUDA libraries: torch bundles its own CUDA runtime, and a second
          # copy on the path would shadow it. The driver (libcuda) comes from the host.
          runtimeLibs = pkgs.lib.makeLibraryPath [
            pkgs.stdenv.cc.cc.lib # libstdc++, libgcc_s
            pkgs.zlib
            pkgs.libsndfile
          ];
        in
        {
          default = pkgs.mkShell {
            packages = [
              python
              pkgs.uv
              pkgs.ffmpeg
              pkgs.libsndfile
              pkgs.git
            ];

            # uv must use this interpreter and never fetch another one.
            UV_PYTHON = "${python}/bin/python3.11";
            UV_PYTHON_DOWNLOADS = "never";
            UV_PYTHON_PREFERENCE = "only-system";

            shellHook = ''
              # Nix's Python setup hooks may export a PYTHONPATH that would leak into the venv.
              unset PYTHONPATH
            ''
            + pkgs.lib.optionalString pkgs.stdenv.isLinux ''
              # Replaced, not appended to: a host path holding CUDA libraries would shadow torch's.
              # /run/opengl-driver/lib is where NixOS puts the driver's libcuda.so.
              export LD_LIBRARY_PATH="${runtimeLibs}:/run/opengl-driver/lib"
              export TRITON_LIBCUDA_PATH=/run/opengl-driver/lib
            ''
            + ''
              uv sync --locked
              source .venv/bin/activate
            '';
          };
        }
      );
    };
}
