"""Settings of the tiny fits shared by several tests (imported as tests.tiny_settings)."""

# small grids and MLPs, few samples per ray: a few hundred iterations fit a toy scene in seconds
TINY_FIELDS = [
    "model.sdf_grid.n_levels=8", "model.sdf_grid.log2_hashmap_size=14", "model.sdf_grid.finest_cell_m=0.05",
    "model.semantic_grid.n_levels=6", "model.semantic_grid.log2_hashmap_size=12",
    "model.semantic_grid.finest_cell_m=0.1", "model.instance_grid.n_levels=6",
    "model.instance_grid.log2_hashmap_size=12", "model.instance_grid.finest_cell_m=0.1",
    "model.sdf_hidden=32", "model.semantic_hidden=16", "model.instance_hidden=16", "model.color_hidden=16",
    "render.n_stratified=6", "render.n_surface=8", "train.rays_per_iter=384", "train.frames_per_iter=2",
    "mesh.voxel_size_m=0.06", "tokens.feat_dim=8", "tokens.class_dim=8",
]
