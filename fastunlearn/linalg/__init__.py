"""Linear operators (GLM and network Hessians) and solvers (CG, PCG, LiSSA, Cholesky)."""
