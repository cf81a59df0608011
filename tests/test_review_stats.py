"""bnnkit.review.stats against independent values: printed t tables, the closed forms of
Student's t for 1, 2 and 4 degrees of freedom, and Holm, Spearman and the MDE by hand."""

import math

import pytest

from bnnkit.review.stats import holm, incomplete_beta, mde, paired, ranks, spearman, t_cdf, t_quantile, t_sf2

# t_{0.975, df} and t_{0.95, df} as printed in standard tables (3 decimals)
T_TABLE = {
    1: (12.706, 6.314),
    2: (4.303, 2.920),
    3: (3.182, 2.353),
    4: (2.776, 2.132),
    5: (2.571, 2.015),
    6: (2.447, 1.943),
    8: (2.306, 1.860),
    10: (2.228, 1.812),
    20: (2.086, 1.725),
    30: (2.042, 1.697),
}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantiles_match_the_printed_table(df):
    two_sided_5, one_sided_5 = T_TABLE[df]
    assert t_quantile(0.975, df) == pytest.approx(two_sided_5, abs=5e-4)
    assert t_quantile(0.95, df) == pytest.approx(one_sided_5, abs=5e-4)
    assert t_quantile(0.025, df) == pytest.approx(-two_sided_5, abs=5e-4)


def closed_form_cdf(t, df):
    if df == 1:  # Cauchy
        return 0.5 + math.atan(t) / math.pi
    if df == 2:
        return 0.5 + t / (2 * math.sqrt(2 + t * t))
    if df == 4:
        x = t / math.sqrt(1 + t * t / 4)
        return 0.5 + 3 / 8 * x * (1 - x * x / 12)
    raise ValueError(df)


@pytest.mark.parametrize("df", [1, 2, 4])
@pytest.mark.parametrize("t", [-30.0, -4.0, -1.0, -0.1, 0.0, 0.3, 1.0, 2.5, 7.0, 100.0])
def test_t_cdf_equals_the_closed_forms(t, df):
    assert t_cdf(t, df) == pytest.approx(closed_form_cdf(t, df), rel=1e-11, abs=1e-14)
    assert t_sf2(t, df) == pytest.approx(2 * (1 - closed_form_cdf(abs(t), df)), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("df", [1, 2, 4])
@pytest.mark.parametrize("p", [0.6, 0.8, 0.9, 0.975, 0.995])
def test_t_quantile_inverts_the_closed_form(p, df):
    assert closed_form_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-11)
    if df == 2:
        assert t_quantile(p, df) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)


def test_incomplete_beta_special_cases():
    # I_x(1, 1) = x;  I_x(a, 1) = x^a;  I_x(1, b) = 1 - (1 - x)^b
    for x in (0.01, 0.3, 0.5, 0.77, 0.999):
        assert incomplete_beta(1, 1, x) == pytest.approx(x, rel=1e-12)
        assert incomplete_beta(3.5, 1, x) == pytest.approx(x**3.5, rel=1e-11)
        assert incomplete_beta(1, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, rel=1e-11)
    assert incomplete_beta(2, 3, 0.0) == 0.0 and incomplete_beta(2, 3, 1.0) == 1.0


def test_paired_on_a_fixed_table():
    method, baseline = [0.91, 0.93, 0.90, 0.92, 0.94], [0.90, 0.90, 0.91, 0.90, 0.91]
    d = [0.01, 0.03, -0.01, 0.02, 0.03]
    mean = sum(d) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    result = paired(method, baseline)
    assert result.n == 5 and result.delta == pytest.approx(mean) and result.sd == pytest.approx(sd)
    half = 2.776 * sd / math.sqrt(5)  # t_{0.975, 4} from the table
    assert (result.ci_high - result.ci_low) / 2 == pytest.approx(half, rel=2e-4)  # 3 printed decimals
    assert (result.ci_high + result.ci_low) / 2 == pytest.approx(mean, rel=1e-12)
    t = mean / (sd / math.sqrt(5))
    assert result.p == pytest.approx(2 * (1 - closed_form_cdf(t, 4)), rel=1e-9)
    assert result.mde == pytest.approx((2.776 + 0.941) * sd / math.sqrt(5), rel=3e-4)  # t_{0.8, 4} = 0.941


def test_paired_edge_cases():
    one = paired([0.5], [0.4])
    assert one.delta == pytest.approx(0.1) and one.sd is one.ci_low is one.p is one.mde is None
    same = paired([0.5, 0.6], [0.4, 0.5])  # identical differences: no spread
    assert same.ci_low == pytest.approx(0.1) == same.ci_high and same.p == 0.0
    assert paired([0.5, 0.6], [0.5, 0.6]).p == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        paired([0.5, 0.6], [0.5])


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.2
    assert holm([0.04, 0.2, 0.01, 0.03]) == pytest.approx([0.09, 0.2, 0.04, 0.09])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == []


def test_spearman_by_hand():
    assert list(ranks([10, 30, 20, 20])) == [1, 4, 2.5, 2.5]
    # ranks (1,2,3,4,5) and (2,1,4,3,5): sum of squared rank differences 4, rho = 1 - 6*4/(5*24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties: Pearson of ranks (1, 2.5, 2.5, 4) and (1, 2, 3, 4): cov 2.5, sds sqrt(4.5) and sqrt(5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_mde_shrinks_with_seeds():
    # with 3 seeds: (4.303 + 1.061) * sd / sqrt 3; with 10: (2.262 + 0.883) * sd / sqrt 10
    assert mde(1.0, 3) == pytest.approx((4.303 + 1.061) / math.sqrt(3), rel=2e-4)
    assert mde(1.0, 10) == pytest.approx((2.262 + 0.883) / math.sqrt(10), rel=3e-4)
