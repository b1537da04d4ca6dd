# Tests of the Julia backend (module MeanODE in python/meanode/julia/MeanODE.jl).
#
# Run from the repository root:
#     julia --project=. -e 'using Pkg; Pkg.instantiate()'
#     julia --project=. julia/test/runtests.jl
#
# 1. Conformance: every case of julia/test/vectors.json (written by the Python engine,
#    `python -m meanode.julia.vectors julia/test/vectors.json`) is solved by MeanODE.solve_limit and
#    compared array by array. Tolerance (stored per array in the file): 20 (rtol max|A| + atol), i.e.
#    the two engines' solver allowances 10 (rtol max|A| + atol) each added up; depth interpolation and
#    the lazy kernel quadrature are the same algorithm on both sides, so their errors cancel.
# 2. Internals: barycentric interpolation, the kernel derivatives (Price's theorem / closed forms)
#    and the analytic Jacobians against finite differences, solver failures as SolverFailure.

using Test
using JSON3
using LinearAlgebra: norm

include(joinpath(@__DIR__, "..", "..", "python", "meanode", "julia", "MeanODE.jl"))
using .MeanODE

const VECTORS = JSON3.read(read(joinpath(@__DIR__, "vectors.json"), String))

"""An array stored as {"shape": [...], "data": [...]} in row-major order, or `nothing`."""
function read_array(obj)
    obj === nothing && return nothing
    shape = Int[Int(x) for x in obj[:shape]]
    data = Float64[Float64(x) for x in obj[:data]]
    isempty(shape) && return data[1]
    return permutedims(reshape(data, Tuple(reverse(shape))), Tuple(length(shape):-1:1))
end

"""The solve_limit call of a case, with `solver` (default: the case's)."""
function solve_case(case; solver = String(case[:solver]))
    inp = case[:inputs]
    return MeanODE.solve_limit(String(case[:kind]), read_array(inp[:X]), read_array(inp[:Y]),
                               read_array(inp[:W_E]), read_array(inp[:W_U]), read_array(inp[:X_eval]);
                               alpha = Float64(case[:alpha]), eta = Float64(case[:eta]), steps = Int(case[:steps]),
                               activation = String(case[:activation]), solver = solver,
                               rtol = Float64(case[:rtol]), atol = Float64(case[:atol]),
                               depth_nodes = Int(case[:depth_nodes]), nodes = read_array(inp[:nodes]),
                               weights = read_array(inp[:weights]))
end

maxdiff(a, b) = isempty(a) ? 0.0 : maximum(abs.(a .- b))

@testset "MeanODE" begin
    @testset "conformance vectors" begin
        @test VECTORS[:format] == "meanode-julia-vectors/1"
        for case in VECTORS[:cases]
            @testset "$(case[:name])" begin
                res = solve_case(case)
                for key in (:H, :B, :f)
                    expected = read_array(case[:expected][key])
                    got = res[String(key)]
                    @test size(got) == size(expected)
                    tol = Float64(case[:tolerance][key])
                    err = maxdiff(got, expected)
                    @test err <= tol
                    err <= tol || @info "$(case[:name]) $(key): max difference $(err) > tolerance $(tol)"
                end
                @test res["nfev"] > 0 && res["nsolves"] == 2 * Int(case[:steps]) + 1
            end
        end
    end

    @testset "other solvers on the closure case" begin
        # Looser: Tsit5 (order 5), Rosenbrock and SDIRK methods at rtol 1e-10 are less accurate than
        # Vern9 for the same tolerance, and the Rosenbrock time derivative is a finite difference.
        case = first(c for c in VECTORS[:cases] if c[:name] == "closure_identity")
        expected = read_array(case[:expected][:f])
        for solver in ("auto", "Vern7", "Vern8", "Tsit5", "Rodas5P", "KenCarp4")
            res = solve_case(case; solver = solver)
            @test maxdiff(res["f"], expected) <= 1e-6
        end
    end

    @testset "depth grid" begin
        g = MeanODE.DepthGrid(17)
        @test g.s[1] == 0.0 && g.s[end] == 1.0 && issorted(g.s)
        ell = zeros(17)
        p(s) = 1 - 3s + 2s^5 - s^16  # degree 16 < Q: interpolated exactly
        V = reshape([p(x) for x in g.s], 1, 1, 17)
        out = zeros(1, 1)
        for s in (0.0, 0.013, 0.5, 0.77, 1.0, g.s[5])
            MeanODE.interp_weights!(ell, g, s)
            @test sum(ell) ≈ 1.0
            MeanODE.interp!(out, V, ell)
            @test out[1, 1] ≈ p(s) atol = 1e-13
        end
    end

    @testset "kernel derivatives (theta_grad vs finite differences)" begin
        for act in (MeanODE.Identity(), MeanODE.Erf(), MeanODE.Relu(), MeanODE.Tanh(), MeanODE.Gelu())
            for (q1, q2, c) in ((0.7, 1.3, 0.4), (2.0, 0.5, -0.6), (0.3, 0.3, 0.1))
                d_q1, d_c = MeanODE.theta_grad(act, q1, q2, c)
                h = 1e-5
                fd_q1 = (MeanODE.theta(act, q1 + h, q2, c) - MeanODE.theta(act, q1 - h, q2, c)) / 2h
                fd_c = (MeanODE.theta(act, q1, q2, c + h) - MeanODE.theta(act, q1, q2, c - h)) / 2h
                @test d_q1 ≈ fd_q1 atol = 1e-7
                @test d_c ≈ fd_c atol = 1e-7
            end
        end
        # identity: theta = 2 h.h'/D exactly; erf: the arcsine kernel at c = 0 is E[erf'(a)]E[erf'(a')] c
        @test MeanODE.theta(MeanODE.Identity(), 1.0, 2.0, 0.5) == 1.0
        @test MeanODE.theta(MeanODE.Erf(), 0.5, 0.5, 0.0) == 0.0
    end

    @testset "analytic Jacobians vs finite differences" begin
        D, N, Q = 2, 3, 9
        g = MeanODE.DepthGrid(Q)
        H = randn(D, N, Q)
        B = 0.1 .* randn(D, N, Q)
        nodes = 1.4 .* randn(7, 2D)
        weights = fill(1 / 7, 7)
        dyns = Any[MeanODE.ClosureDynamics(D, 1.0, 0.5, g, N),
                   MeanODE.LazyDynamics(MeanODE.Tanh(), D, 0.5, g, N),
                   MeanODE.LazyDynamics(MeanODE.Erf(), D, 0.5, g, N)]
        for act in (MeanODE.Tanh(), MeanODE.Gelu(), MeanODE.Erf(), MeanODE.Identity())
            push!(dyns, MeanODE.NodeDynamics(act, nodes, weights, 1.0, 0.5, g, D, N, N))
        end
        for dyn in dyns
            MeanODE.update!(dyn, H, B)
            dyn.Htrain = H
            s = 0.37
            for (rhs!, jac!) in ((MeanODE.forward!, MeanODE.forward_jac!), (MeanODE.adjoint!, MeanODE.adjoint_jac!))
                u = randn(D, N)
                J = zeros(D * N, D * N)
                jac!(J, u, dyn, s)
                Jfd = zeros(D * N, D * N)
                du1, du2 = zeros(D, N), zeros(D, N)
                for k in 1:(D * N)
                    up, um = copy(u), copy(u)
                    up[k] += 1e-6
                    um[k] -= 1e-6
                    rhs!(du1, up, dyn, s)
                    rhs!(du2, um, dyn, s)
                    Jfd[:, k] = vec(du1 .- du2) ./ 2e-6
                end
                @test norm(J - Jfd, Inf) <= 1e-6 * max(1.0, norm(J, Inf))
            end
        end
    end

    @testset "errors" begin
        case = first(c for c in VECTORS[:cases] if c[:name] == "closure_identity")
        inp = case[:inputs]
        args = (read_array(inp[:X]), read_array(inp[:Y]), read_array(inp[:W_E]), read_array(inp[:W_U]))
        @test_throws ArgumentError MeanODE.algorithm("nope")
        @test_throws ArgumentError MeanODE.solve_limit("closure", args...; eta = 0.5, steps = 1, activation = "tanh")
        @test_throws ArgumentError MeanODE.solve_limit("quadrature", args...; eta = 0.5, steps = 1)
        err = try
            MeanODE.solve_limit("closure", args...; eta = 0.5, steps = 1, activation = "identity",
                                solver = "Vern9", maxiters = 1)
            nothing
        catch e
            e
        end
        @test err isa MeanODE.SolverFailure
        name, msg, retcode, s = MeanODE.describe_error(err)
        @test name == "MeanODE.SolverFailure"
        @test retcode == "MaxIters"
        @test occursin("MaxIters", msg)
        @test MeanODE.describe_error(ArgumentError("x"))[1] == "ArgumentError"
    end
end
